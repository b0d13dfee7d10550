"""Cached forward passes: one pass per (model, dataset, transform) serves every detector, IPM,
MGI setting and layer set of a sweep.

A pass records the union of what the configured run may need (`Capture`): the pooled features of
every layer of every layer set of the model (`ctx.capture_layers`), and spatial vectors when a
configured detector may use them under some `ipm=` (`Detector.may_need`). The cache key holds that
capture, not the run's own layer set, so a `layer_set=` or `ipm=` sweep finds the same artifact;
each run then reads only its slice (its layers, spatial vectors only when its IPM needs them),
which equals the output of a direct pass over that subset (tests/test_feature_cache.py).
Under torchrun the batches are split across ranks and gathered, so every rank ends with the whole
bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from c2ir.cache import Artifact, atomic_save_tensors
from c2ir.data.imageset import AnyImageSet
from c2ir.data.loader import BatchStream, batch_spans
from c2ir.distributed import merge_strided_batches
from c2ir.extraction import FeatureBundle, extract_features
from c2ir.stages.common import RunContext

log = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"


@dataclass(frozen=True)
class Capture:
    """What one cached pass over a dataset records: pooled features of `layers` and, with
    `spatial_grid > 0`, their spatial vectors (plus logits, penultimate, BN-input means, labels)."""

    layers: tuple[str, ...]
    spatial_grid: int


def capture_for(ctx: RunContext, spatial_grid: int = 0, reuse_spatial: bool = False) -> Capture:
    """The capture serving a run that needs spatial vectors on a `spatial_grid` (0: none), and may
    need them in a sweep (`reuse_spatial`, ignored with `features.capture=configured`)."""
    union = str(ctx.cfg.features.get("capture", "union")) == "union"
    grid = int(spatial_grid) or (int(ctx.cfg.features.spatial_grid) if union and reuse_spatial else 0)
    return Capture(tuple(ctx.capture_layers), grid)


def key(ctx: RunContext, dataset_spec: dict[str, Any], spatial_grid: int = 0, reuse_spatial: bool = False) -> str:
    """`dataset_spec` holds the set's key fields (KEY_RULES["features:*"]) and content fingerprint;
    the key names the captured layers and grid (with `features.capture=configured`: exactly this
    run's layers, so a pass that serves one layer set only)."""
    cap = capture_for(ctx, spatial_grid, reuse_spatial)
    spec = {"dataset": dataset_spec, "layers": list(cap.layers), "spatial_grid": cap.spatial_grid}
    return ctx.key("features", spec, {"model": ctx.model_key})


def slice_keys(names: list[str], layers: list[str], spatial: bool) -> list[str]:
    """The entries of a captured bundle a run reads: its layers' pooled (and spatial) features and
    every entry that is not per-layer (logits, penultimate, labels, BN-input means), in stored order."""
    want = {f"layer/{n}" for n in layers} | ({f"spatial/{n}" for n in layers} if spatial else set())
    return [k for k in names if k in want or not k.startswith(("layer/", "spatial/"))]


def ensure(ctx: RunContext, name: str, dataset_spec: dict[str, Any], load: Callable[[], AnyImageSet],
           spatial_grid: int = 0, reuse_spatial: bool = False) -> tuple[Artifact, FeatureBundle]:
    """Features of one dataset for this run's layers (spatial vectors when `spatial_grid > 0`), sliced
    from the cached capture or from one (possibly sharded) forward pass that records the capture."""
    cap = capture_for(ctx, spatial_grid, reuse_spatial)
    art_key = key(ctx, dataset_spec, spatial_grid, reuse_spatial)
    inputs = {"model": ctx.model_digest}
    found = ctx.store.lookup("features", art_key, inputs)
    if found is None:
        data = load()
        bundle, skipped = _extract(ctx, data, cap, name)

        def build(out: Path) -> dict:
            atomic_save_tensors(out / FEATURES_FILE, bundle)
            return {"dataset": name, "count": len(data) - skipped, "skipped": skipped}

        if ctx.dist.is_main:
            ctx.store.get_or_create("features", art_key, build, config={"dataset": dataset_spec},
                                    upstream={"model": ctx.model_key}, inputs=inputs)
        ctx.dist.barrier()
        found = ctx.store.lookup("features", art_key, inputs)
        assert found is not None
        return found, {k: bundle[k] for k in slice_keys(list(bundle), ctx.layers, spatial_grid > 0)}
    log.info("cache hit: features/%s (%s)", art_key, name)
    names = found.tensor_names(FEATURES_FILE)
    return found, found.tensors(FEATURES_FILE, slice_keys(names, ctx.layers, spatial_grid > 0))


def _extract(ctx: RunContext, data: AnyImageSet, cap: Capture, name: str) -> tuple[FeatureBundle, int]:
    """(bundle, unreadable files skipped): the set is read in batches by `ctx.num_workers` processes."""
    n_batches = len(batch_spans(len(data), ctx.batch_size))
    world = ctx.dist.world if ctx.dist.enabled else 1
    mine = list(range(ctx.dist.rank, n_batches, world)) if world > 1 else None
    stream = BatchStream(data, ctx.batch_size, ctx.num_workers, pin_memory=ctx.device.type == "cuda",
                         batches=mine, desc=name)
    part = extract_features(ctx.model, stream, ctx.normalizer, list(cap.layers), ctx.head, batch_size=ctx.batch_size,
                            device=ctx.device, spatial_grid=cap.spatial_grid, desc=f"features {name}")
    if world == 1:
        return part, stream.skipped
    # rank r holds batches r, r+W, ...: gather and restore the dataset order; a batch may be short
    # (its unreadable files dropped), so each rank's per-batch counts locate its rows
    parts = ctx.dist.all_gather_object((part, stream.counts, stream.skipped))
    bundle = merge_strided_batches([p for p, _, _ in parts], len(data), ctx.batch_size, [c for _, c, _ in parts])
    return bundle, sum(s for _, _, s in parts)
