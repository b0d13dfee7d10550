"""What every node of a run reads besides its inputs: the job's normaliser and decoding workers,
and `cli_job`, the CLI's job (a validated config, the disk store, the device, the layers).

The API makes its own Job (c2ir/api.py) with a memory store and the caller's model.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from c2ir import distributed
from c2ir.cache import ArtifactStore
from c2ir.data.digests import DigestCache
from c2ir.data.imageset import Normalizer
from c2ir.device import resolve_device
from c2ir.errors import C2IRError
from c2ir.extraction import resolve_layers
from c2ir.graph import Job, plain
from c2ir.models.loading import build_classifier
from c2ir.validation import validate


def layer_patterns(cfg: DictConfig) -> list[str]:
    sets = plain(cfg.model.layer_sets)
    name = str(cfg.layer_set)
    if name not in sets:
        raise C2IRError(f"unknown layer_set={name!r} for this model; choose one of {sorted(sets)}")
    return list(sets[name])


def capture_layers(cfg: DictConfig, model: nn.Module, layers: list[str]) -> list[str]:
    """Layers a cached forward pass records: with `features.capture=union` (default) every layer of
    every layer set of the model, so a `layer_set=` sweep reuses one pass per dataset; with
    `configured` only `layers`. A set whose patterns match no module of this model is skipped here
    (it fails only when selected)."""
    if str(cfg.features.capture) != "union":
        return list(layers)
    chosen = set(layers)
    for patterns in plain(cfg.model.layer_sets).values():
        try:
            chosen.update(resolve_layers(model, list(patterns)))
        except C2IRError:
            continue
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(chosen, key=order.__getitem__)


def cli_job(cfg: DictConfig) -> Job:
    """The job of one CLI invocation. Sets no process-wide state: torch threads and the torchrun process
    group are the entry point's (cli.py); this reads the group it joined. Layer names are resolved when a
    node first reads them, on an untrained instance of the architecture (no checkpoint is read, nothing is
    trained), so `c2ir train` never needs them."""
    cfg = validate(cfg)
    patterns = layer_patterns(cfg)

    def names() -> tuple[list[str], list[str]]:
        fresh = build_classifier(cfg.model, int(cfg.data.num_classes))
        layers = resolve_layers(fresh, patterns)
        return layers, capture_layers(cfg, fresh, layers)

    size = int(cfg.data.image_size)
    return Job(cfg=cfg, store=ArtifactStore(cfg.cache_root), device=resolve_device(str(cfg.device)),
               dist=distributed.current(), layer_names=names, input_shape=(int(cfg.data.channels), size, size),
               layer_patterns=patterns)


def normalizer(job: Job) -> Normalizer | None:
    """Pixels -> the model's input space (`model.mean`, `model.std`); None when the API was given neither."""
    if "normalizer" not in job.memo:
        mean, std = job.cfg.model.get("mean"), job.cfg.model.get("std")
        job.memo["normalizer"] = None if mean is None else Normalizer(mean, std)
    return job.memo["normalizer"]


DIGESTS_FOLDER = ".file-digests"  # under cache_root: the remembered SHA-256 of folder data files


def digests(job: Job) -> DigestCache | None:
    """The content digests of folder data files, remembered under the disk store's root while a file is
    unchanged (c2ir.data.digests); None for a store without a folder (every file is hashed once per process)."""
    if "digests" not in job.memo:
        root = getattr(job.store, "root", None)
        job.memo["digests"] = None if root is None else DigestCache(Path(root) / DIGESTS_FOLDER)
    return job.memo["digests"]


def num_workers(job: Job) -> int:
    """Decoding processes of streamed datasets (`num_workers`, default: one per CPU)."""
    from c2ir.data.loader import default_num_workers

    value = job.cfg.get("num_workers")
    return default_num_workers() if value is None else int(value)
