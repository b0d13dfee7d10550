"""Cached forward passes: features of a dataset are computed once per
(model, dataset, transform, layer set, spatial grid) and reused by every detector,
IPM and MGI setting of a sweep. Under torchrun the batches are split across ranks
and gathered, so every rank ends with the whole bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from c2ir.cache import Artifact, atomic_save_tensors
from c2ir.data.imageset import AnyImageSet
from c2ir.data.loader import BatchStream, batch_spans
from c2ir.extraction import FeatureBundle, extract_features
from c2ir.stages.common import RunContext

log = logging.getLogger(__name__)


def key(ctx: RunContext, dataset_spec: dict[str, Any], spatial_grid: int) -> str:
    """`dataset_spec` holds the set's key fields (KEY_RULES["features:*"]) and content fingerprint."""
    spec = {"dataset": dataset_spec, "layers": ctx.layers, "spatial_grid": int(spatial_grid)}
    return ctx.key("features", spec, {"model": ctx.model_key})


def ensure(ctx: RunContext, name: str, dataset_spec: dict[str, Any], load: Callable[[], AnyImageSet],
                    spatial_grid: int = 0) -> tuple[Artifact, FeatureBundle]:
    """Features of one dataset, from the cache or from one (possibly sharded) forward pass."""
    art_key = key(ctx, dataset_spec, spatial_grid)
    inputs = {"model": ctx.model_digest}
    found = ctx.store.lookup("features", art_key, inputs)
    if found is None:
        data = load()
        bundle, skipped = _extract(ctx, data, spatial_grid, name)

        def build(out: Path) -> dict:
            atomic_save_tensors(out / "features.safetensors", bundle)
            return {"dataset": name, "count": len(data) - skipped, "skipped": skipped}

        if ctx.dist.is_main:
            ctx.store.get_or_create("features", art_key, build, config={"dataset": dataset_spec},
                                    upstream={"model": ctx.model_key}, inputs=inputs)
        ctx.dist.barrier()
        found = ctx.store.lookup("features", art_key, inputs)
        assert found is not None
        return found, bundle
    log.info("cache hit: features/%s (%s)", art_key, name)
    return found, found.tensors("features.safetensors")


def _extract(ctx: RunContext, data: AnyImageSet, spatial_grid: int, name: str) -> tuple[FeatureBundle, int]:
    """(bundle, unreadable files skipped): the set is read in batches by `ctx.num_workers` processes."""
    n_batches = len(batch_spans(len(data), ctx.batch_size))
    world = ctx.dist.world if ctx.dist.enabled else 1
    mine = list(range(ctx.dist.rank, n_batches, world)) if world > 1 else None
    stream = BatchStream(data, ctx.batch_size, ctx.num_workers, pin_memory=ctx.device.type == "cuda",
                         batches=mine, desc=name)
    part = extract_features(ctx.model, stream, ctx.normalizer, ctx.layers, ctx.head, batch_size=ctx.batch_size,
                            device=ctx.device, spatial_grid=spatial_grid, desc=f"features {name}")
    if world == 1:
        return part, stream.skipped
    # rank r holds batches r, r+W, ...: gather and restore the dataset order; a batch may be short
    # (its unreadable files dropped), so each rank's per-batch counts locate its rows
    parts = ctx.dist.all_gather_object((part, stream.counts, stream.skipped))
    starts = [[sum(c[:j]) for j in range(len(c))] for _, c, _ in parts]
    merged: dict[str, list[torch.Tensor]] = {}
    for b in range(n_batches):
        r, j = b % world, b // world
        src, counts, _ = parts[r]
        lo, cnt = starts[r][j], counts[j]
        for k, v in src.items():
            merged.setdefault(k, []).append(v[lo:lo + cnt])
    bundle = {k: torch.cat(v) for k, v in merged.items()}
    return bundle, sum(s for _, _, s in parts)
