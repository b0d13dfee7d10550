"""Stage `run`: every stage in order; each is a cache hit when its artifact exists."""

from __future__ import annotations

from c2ir.data import load_id, load_ood
from c2ir.extraction import require_batchnorm
from c2ir.stages import collect_stats, evaluate, synthesize, train, weight_layers
from c2ir.stages.common import RunContext


def check_folders(ctx: RunContext) -> None:
    """List the ID test split and the OOD folder sets before any synthesis: a missing or empty folder
    is reported (with its expected layout) in seconds, not after hours of synthesis. Listing only:
    nothing is decoded."""
    cfg = ctx.cfg
    if cfg.data.source in ("imagefolder", "shared", "imglist"):
        load_id(cfg.data, "test")
    for name in cfg.ood:
        if cfg.ood[name].get("source") in ("folder", "imglist"):
            load_ood(name, cfg.ood[name], cfg.data)


def run(cfg) -> None:
    ctx = RunContext(cfg)
    check_folders(ctx)
    evaluate.build_detectors(ctx)  # a misspelled detector parameter fails here, not after training and synthesis
    require_batchnorm(ctx.fresh_model(), str(cfg.model.get("name") or cfg.model.arch))  # before any training
    if ctx.uses_training:
        train.ensure(ctx)
    synthesize.ensure(ctx)
    collect_stats.ensure(ctx)
    weight_layers.ensure(ctx)
    evaluate.report_evaluation(ctx)
