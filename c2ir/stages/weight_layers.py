"""Stage `weight-layers`: MGI layer weights, from gradients on the impressions only."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from c2ir.cache import Artifact, atomic_write_json
from c2ir.mgi import METHODS, impression_importance, normalize_weights
from c2ir.stages.common import RunContext, plain
from c2ir.stages import synthesize

log = logging.getLogger(__name__)


def key(ctx: RunContext, synth_key: str) -> str:
    return ctx.key("weight_layers", {**ctx.fields("weight_layers"), "layers": ctx.layers},
                   {"synthesize": synth_key, "model": ctx.model_key})


def ensure(ctx: RunContext) -> Artifact:
    synth = synthesize.ensure(ctx)
    method = str(ctx.cfg.mgi.method)
    art_key = key(ctx, synth.key)

    def build(out: Path) -> dict:
        images, targets = synthesize.load(synth)
        importance = impression_importance(ctx.model, ctx.normalizer, images, targets, ctx.layers,
                                           ctx.batch_size, ctx.device)
        weights = normalize_weights(importance[method])
        record = {"method": method, "layers": ctx.layers, "weights": weights.tolist(),
                  "weights_by_method": {m: normalize_weights(importance[m]).tolist() for m in METHODS},
                  "importance": {m: v.tolist() for m, v in importance.items()}}
        atomic_write_json(out / "weights.json", record)
        for name, w in zip(ctx.layers, weights.tolist()):
            log.info("MGI (%s) weight of %-12s %.4f", method, name, w)
        return {"method": method}

    return ctx.store.get_or_create("weight_layers", art_key, build, config={"mgi": plain(ctx.cfg.mgi)},
                                   upstream={"synthesize": synth.key, "model": ctx.model_key},
                                   inputs={"synthesize": synth.digest, "model": ctx.model_digest})


def load(art: Artifact) -> tuple[list[str], torch.Tensor]:
    rec = art.json("weights.json")
    return rec["layers"], torch.tensor(rec["weights"])


def run(cfg) -> None:
    ctx = RunContext(cfg)
    art = ensure(ctx)
    rec = art.json("weights.json")
    log.info("weight-layers (%s): %s", rec["method"],
             ", ".join(f"{n}={w:.3f}" for n, w in zip(rec["layers"], rec["weights"])))
