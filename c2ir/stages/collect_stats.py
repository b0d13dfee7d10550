"""Stage `collect-stats`: per-layer, per-class feature statistics of the impressions.

Stores the impressions' FeatureBundle (logits, penultimate, pooled and spatial layer
features) next to the statistics, because the C2IR score normalises deviations on the
impressions and the data-free variants of Mahalanobis/KNN/ReAct fit on them. With
`collect_stats.compare_with_id=true` it also measures how close the impressions' class
means are to real ID training data's (the paper's first claim).
"""

from __future__ import annotations

import logging
from pathlib import Path

from c2ir.cache import Artifact, atomic_save_tensors, atomic_write_json
from c2ir.data import load_id
from c2ir.extraction import extract_features
from c2ir.stats import ClassStats, compare_stats, compute_class_stats
from c2ir.stages.common import RunContext, plain
from c2ir.stages import features, synthesize

log = logging.getLogger(__name__)


def key(ctx: RunContext, synth_key: str) -> str:
    spec = {**ctx.fields("collect_stats"), "layers": ctx.layers}
    return ctx.key("collect_stats", spec, {"synthesize": synth_key, "model": ctx.model_key})


def id_train_features(ctx: RunContext, spatial_grid: int = 0):
    """Features of (a fixed-seed subset of) the real ID training split: full-access detectors only."""
    spec = ctx.data_spec("train")
    data_cfg = ctx.cfg.data.copy()
    data_cfg.max_train_samples = ctx.cfg.evaluate.max_train_samples
    return features.ensure(ctx, f"{ctx.cfg.data.name}-train", spec, lambda: load_id(data_cfg, "train"), spatial_grid)


def ensure(ctx: RunContext) -> Artifact:
    synth = synthesize.ensure(ctx)
    art_key = key(ctx, synth.key)
    k = int(ctx.cfg.data.num_classes)
    cs = ctx.cfg.collect_stats

    def build(out: Path) -> dict:
        images, targets = synthesize.load(synth)
        bundle = extract_features(ctx.model, images, ctx.normalizer, ctx.layers, ctx.head,
                                  batch_size=ctx.batch_size, device=ctx.device,
                                  spatial_grid=int(ctx.cfg.features.spatial_grid), desc="features impressions")
        bundle["labels"] = targets
        stats = compute_class_stats(bundle, targets, ctx.layers, k, int(cs.max_spatial_per_class), ctx.seed)
        atomic_save_tensors(out / "impression_features.safetensors", bundle)
        atomic_save_tensors(out / "stats.safetensors", stats.to_tensors())
        atomic_write_json(out / "layers.json", ctx.layers)
        extra: dict = {"layers": ctx.layers}
        if cs.compare_with_id:
            _, real = id_train_features(ctx)
            real_stats = compute_class_stats(real, real["labels"], ctx.layers, k)
            comparison = compare_stats(stats, real_stats)
            atomic_write_json(out / "comparison_with_id.json", comparison)
            for name, v in comparison.items():
                log.info("impressions vs real ID class means at %-12s cosine %.3f, relative L2 %.3f",
                         name, v["cosine"], v["relative_l2"])
            extra["comparison_with_id"] = comparison
        return extra

    return ctx.store.get_or_create("collect_stats", art_key, build,
                                   config={"collect_stats": plain(cs), "layers": ctx.layers},
                                   upstream={"synthesize": synth.key, "model": ctx.model_key}, seed=ctx.seed,
                                   inputs={"synthesize": synth.digest, "model": ctx.model_digest})


def load(art: Artifact) -> tuple[ClassStats, dict]:
    layers = art.json("layers.json")
    return ClassStats.from_tensors(layers, art.tensors("stats.safetensors")), art.tensors("impression_features.safetensors")


def run(cfg) -> None:
    ctx = RunContext(cfg)
    art = ensure(ctx)
    log.info("collect-stats: statistics of %d layers at %s", len(art.json("layers.json")), art.path)
