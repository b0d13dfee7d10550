"""Stage `weight-layers`: MGI layer weights, from gradients on the impressions only."""

from __future__ import annotations

import logging
from typing import Any

import torch

from c2ir.graph import Job, KeyRule, Node, Step, Use, resolve
from c2ir.mgi import METHODS, impression_importance, normalize_weights
from c2ir.stages.job import normalizer
from c2ir.stages.synthesize import SYNTHESIZE
from c2ir.stages.train import MODEL, classifier

log = logging.getLogger(__name__)

WL_RULE = KeyRule(("mgi", "layer_set", "model.layer_sets"))  # gradients on impressions: no seed


def _build(step: Step, out: Any) -> dict:
    job = step.job
    method = str(job.cfg.mgi.method)
    imp = step.value("synthesize")
    importance = impression_importance(classifier(job), normalizer(job), imp.images, imp.targets, job.layers,
                                       job.batch_size, job.device)
    weights = normalize_weights(importance[method])
    out.save_json("weights.json", {"method": method, "layers": job.layers, "weights": weights.tolist(),
                                   "weights_by_method": {m: normalize_weights(importance[m]).tolist() for m in METHODS},
                                   "importance": {m: v.tolist() for m, v in importance.items()}})
    for name, w in zip(job.layers, weights.tolist()):
        log.info("MGI (%s) weight of %-12s %.4f", method, name, w)
    return {"method": method}


def _load(art: Any, job: Job, _: Any) -> tuple[list[str], torch.Tensor]:
    rec = art.json("weights.json")
    return rec["layers"], torch.tensor(rec["weights"])


WEIGHT_LAYERS = Node("weight_layers", version=2, rule=WL_RULE, spec=lambda job, _: {"layers": job.layers},
                     uses=lambda job, _: {"synthesize": Use(SYNTHESIZE), "model": Use(MODEL)}, build=_build, load=_load)


def run(job: Job) -> dict:
    art = resolve(WEIGHT_LAYERS, job).artifact
    rec = art.json("weights.json")
    log.info("weight-layers (%s): %s", rec["method"],
             ", ".join(f"{n}={w:.3f}" for n, w in zip(rec["layers"], rec["weights"])))
    return {"path": str(art.path), "method": rec["method"], "layers": rec["layers"], "weights": rec["weights"]}
