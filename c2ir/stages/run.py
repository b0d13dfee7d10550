"""Stage `run`: every stage in order; each is a cache hit when its artifact exists."""

from __future__ import annotations

from c2ir.stages import collect_stats, evaluate, synthesize, train, weight_layers
from c2ir.stages.common import RunContext


def run(cfg) -> None:
    ctx = RunContext(cfg)
    if ctx.uses_training:
        train.ensure(ctx)
    synthesize.ensure(ctx)
    collect_stats.ensure(ctx)
    weight_layers.ensure(ctx)
    evaluate.report_evaluation(ctx)
