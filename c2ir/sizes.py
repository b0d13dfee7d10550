"""Estimates of what a config will hold in memory and write to disk, checked before any compute.

Why: `synth.per_class=1000000000000` is a valid integer but would run for millennia and needs
petabytes, and `ood.gaussian_noise.max_samples=50000000` allocates 12.8 GB at once; both used to be
accepted and fail (or swap) much later. The estimates cover the tensors c2ir holds whole: the
impressions (float32 pixels, held at assembly and written to the cache) and the generated OOD sets
(float32 while drawn, uint8 after). Streamed folder sets are read batch by batch and need no check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from c2ir.errors import C2IRError

FLOAT32 = 4
GENERATED_SOURCES = ("noise", "photo_patches")  # drawn into one in-memory tensor
DEFAULT_GENERATED = {"noise": 2000, "photo_patches": 1000}  # c2ir.data.sources.load_ood's defaults


def human(n: float) -> str:
    """Bytes as a short string: 12.8 GB, 2.6 PB."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # pragma: no cover


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 when unknown: then memory is not checked)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def free_disk(folder: Path) -> int:
    """Free bytes on the disk holding `folder` (or its nearest existing parent)."""
    p = Path(folder).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return 0


def estimates(cfg: DictConfig) -> list[tuple[str, str, int, int]]:
    """(config key, what, peak memory bytes, cache bytes) of each tensor the config makes c2ir hold whole.
    Impressions: the batches and their concatenation (two float32 copies) in memory, one on disk.
    Generated sets: three float32 copies at the peak of drawing and quantising them (data/embedded.py)."""
    data, synth = cfg.get("data") or {}, cfg.get("synth") or {}
    try:
        pixels = int(data.channels) * int(data.image_size) ** 2
        count = int(synth.per_class) * int(data.num_classes)
    except (TypeError, ValueError, AttributeError):
        return []  # the schema reports the bad value itself
    out = [("synth.per_class", f"{count:,} impressions of {pixels:,} float32 values each",
            2 * count * pixels * FLOAT32, count * pixels * FLOAT32)]
    for name, ood in (cfg.get("ood") or {}).items():
        if not isinstance(ood, (dict, DictConfig)) or ood.get("source") not in GENERATED_SOURCES:
            continue
        n = ood.get("max_samples") or DEFAULT_GENERATED[str(ood.source)]
        out.append((f"ood.{name}.max_samples", f"{int(n):,} generated images of {pixels:,} float32 values each",
                    3 * int(n) * pixels * FLOAT32, 0))
    return out


def check_sizes(cfg: DictConfig, memory: int | None = None, disk: int | None = None) -> None:
    """One line, before any compute, when a tensor the config asks for cannot fit in this machine's memory
    or (for cached ones) on the cache disk; the estimate is in the message."""
    memory = physical_memory() if memory is None else memory
    disk = free_disk(Path(str(cfg.get("cache_root") or "."))) if disk is None else disk
    for key, what, in_memory, on_disk in estimates(cfg):
        value = cfg_value(cfg, key)
        if memory and in_memory > memory:
            raise C2IRError(f"{key}={value} needs about {human(in_memory)} of memory ({what}), more than this "
                            f"machine's {human(memory)}; lower {key}")
        if disk and on_disk > disk:
            raise C2IRError(f"{key}={value} would write about {human(on_disk)} to the cache ({what}), more than the "
                            f"{human(disk)} free under cache_root={cfg.get('cache_root')}; lower {key} or free space")


def cfg_value(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
    return node
