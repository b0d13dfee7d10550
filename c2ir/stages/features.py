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

from c2ir.cache import Artifact, atomic_save_tensors
from c2ir.data.imageset import ImageSet
from c2ir.distributed import merge_strided_batches
from c2ir.extraction import FeatureBundle, extract_features
from c2ir.stages.common import RunContext

log = logging.getLogger(__name__)


def key(ctx: RunContext, dataset_spec: dict[str, Any], spatial_grid: int) -> str:
    """`dataset_spec` holds the set's key fields (KEY_RULES["features:*"]) and content fingerprint."""
    spec = {"dataset": dataset_spec, "layers": ctx.layers, "spatial_grid": int(spatial_grid)}
    return ctx.key("features", spec, {"model": ctx.model_key})


def ensure(ctx: RunContext, name: str, dataset_spec: dict[str, Any], load: Callable[[], ImageSet],
                    spatial_grid: int = 0) -> tuple[Artifact, FeatureBundle]:
    """Features of one dataset, from the cache or from one (possibly sharded) forward pass."""
    art_key = key(ctx, dataset_spec, spatial_grid)
    inputs = {"model": ctx.model_digest}
    found = ctx.store.lookup("features", art_key, inputs)
    if found is None:
        data = load()
        if data.skipped:
            log.warning("%s: %d unreadable image(s) skipped", name, data.skipped)
        bundle = _extract(ctx, data, spatial_grid, name)

        def build(out: Path) -> dict:
            atomic_save_tensors(out / "features.safetensors", bundle)
            return {"dataset": name, "count": len(data), "skipped": data.skipped}

        if ctx.dist.is_main:
            ctx.store.get_or_create("features", art_key, build, config={"dataset": dataset_spec},
                                    upstream={"model": ctx.model_key}, inputs=inputs)
        ctx.dist.barrier()
        found = ctx.store.lookup("features", art_key, inputs)
        assert found is not None
        return found, bundle
    log.info("cache hit: features/%s (%s)", art_key, name)
    return found, found.tensors("features.safetensors")


def _extract(ctx: RunContext, data: ImageSet, spatial_grid: int, name: str) -> FeatureBundle:
    shard = (ctx.dist.rank, ctx.dist.world) if ctx.dist.enabled else None
    part = extract_features(ctx.model, data, ctx.normalizer, ctx.layers, ctx.head, batch_size=ctx.batch_size,
                            device=ctx.device, spatial_grid=spatial_grid, desc=f"features {name}", shard=shard)
    if shard is None:
        return part
    # rank r holds batches r, r+W, ...: gather and restore the dataset order
    bundle = merge_strided_batches(ctx.dist.all_gather_object(part), len(data), ctx.batch_size)
    if data.labels is not None:
        bundle["labels"] = data.labels.clone()
    return bundle
