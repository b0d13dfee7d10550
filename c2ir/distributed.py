"""torch.distributed, when launched by torchrun: rank/world info, barriers and gathers.

Single-process runs see rank 0 of a world of 1 and every call here is a no-op, so
the stages are written once for both cases. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def init_from_env() -> None:
    """Join torchrun's process group once, if its environment asks for one (WORLD_SIZE > 1).

    Process-wide state (the default process group, the CUDA device of this rank): called by
    the CLI entry point, never by library objects.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)


def current() -> DistInfo:
    """Rank and world size of the process group `init_from_env` joined; rank 0 of 1 otherwise."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def merge_strided_batches(parts: list[dict[str, torch.Tensor]], n: int, batch_size: int,
                          counts: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Undo a strided split of `n` rows into batches of `batch_size`: rank r of W holds batches
    r, r+W, r+2W, ... concatenated (`parts[r]`); returns every tensor in dataset order.

    Batch b is the (b // W)-th batch of `parts[b % W]`. Its row count is `counts[r][j]` when given
    (a streamed batch may be short: its unreadable files were dropped), else `batch_size` (only the
    dataset's last batch is short, and it is the last batch on its rank).
    """
    world, n_batches = len(parts), (n + batch_size - 1) // batch_size
    if counts is None:
        sizes = [min(batch_size, n - b * batch_size) for b in range(n_batches)]
        counts = [sizes[r::world] for r in range(world)]
    starts = [[sum(c[:j]) for j in range(len(c))] for c in counts]
    merged: dict[str, list[torch.Tensor]] = {}
    for b in range(n_batches):
        r, j = b % world, b // world
        lo, cnt = starts[r][j], counts[r][j]
        for k, v in parts[r].items():
            merged.setdefault(k, []).append(v[lo:lo + cnt])
    return {k: torch.cat(v) for k, v in merged.items()}
