"""Stage `collect-stats`: per-layer, per-class feature statistics of the impressions.

Stores the impressions' FeatureBundle (logits, penultimate, pooled and spatial layer
features) next to the statistics, because the C2IR score normalises deviations on the
impressions and the data-free variants of Mahalanobis/KNN/ReAct fit on them. With
`collect_stats.compare_with_id=true` it also measures how close the impressions' class
means are to real ID training data's (the paper's first claim).
"""

from __future__ import annotations

import logging
from typing import Any

from c2ir.extraction import FeatureBundle, extract_features
from c2ir.graph import Job, KeyRule, Node, Step, Use, resolve
from c2ir.stages import features
from c2ir.stages.job import normalizer
from c2ir.stages.synthesize import SYNTHESIZE
from c2ir.stages.train import LAYER_FIELDS, MODEL, classifier, head
from c2ir.stats import ClassStats, compare_stats, compute_class_stats

log = logging.getLogger(__name__)

# `seed` draws the fixed sample of spatial vectors per class
CS_RULE = KeyRule(("seed", "collect_stats", "features.spatial_grid", *LAYER_FIELDS, "evaluate.max_train_samples"))


def _uses(job: Job, _: Any) -> dict[str, Use]:
    uses = {"synthesize": Use(SYNTHESIZE), "model": Use(MODEL)}
    if job.cfg.collect_stats.compare_with_id:
        uses["id_train"] = Use(features.FEATURES, features.ID_TRAIN, keyed=False)
    return uses


def _build(step: Step, out: Any) -> dict:
    job = step.job
    k = int(job.cfg.data.num_classes)
    cs = job.cfg.collect_stats
    imp = step.value("synthesize")
    bundle = extract_features(classifier(job), imp.images, normalizer(job), job.layers, head(job),
                              batch_size=job.batch_size, device=job.device,
                              spatial_grid=int(job.cfg.features.spatial_grid), desc="features impressions")
    bundle["labels"] = imp.targets
    stats = compute_class_stats(bundle, imp.targets, job.layers, k, int(cs.max_spatial_per_class), job.seed)
    out.save_tensors("impression_features.safetensors", bundle)
    out.save_tensors("stats.safetensors", stats.to_tensors())
    out.save_json("layers.json", job.layers)
    extra: dict = {"layers": job.layers}
    if step.has("id_train"):
        real = step.value("id_train")
        comparison = compare_stats(stats, compute_class_stats(real, real["labels"], job.layers, k))
        out.save_json("comparison_with_id.json", comparison)
        for name, v in comparison.items():
            log.info("impressions vs real ID class means at %-12s cosine %.3f, relative L2 %.3f",
                     name, v["cosine"], v["relative_l2"])
        extra["comparison_with_id"] = comparison
    return extra


def _load(art: Any, job: Job, _: Any) -> tuple[ClassStats, FeatureBundle]:
    layers = art.json("layers.json")
    return ClassStats.from_tensors(layers, art.tensors("stats.safetensors")), art.tensors("impression_features.safetensors")


COLLECT_STATS = Node("collect_stats", version=3,  # 3: tied within-class precision per layer (ipm=mahalanobis)
                     rule=CS_RULE, spec=lambda job, _: {"layers": job.layers},
                     uses=_uses, build=_build, load=_load, seed=lambda job: job.seed)


def run(job: Job) -> dict:
    art = resolve(COLLECT_STATS, job).artifact
    layers = art.json("layers.json")
    log.info("collect-stats: statistics of %d layers at %s", len(layers), art.path)
    return {"path": str(art.path), "layers": layers}
