"""Stage `run`: every stage in order; each is a cache hit when its artifact exists."""

from __future__ import annotations

from c2ir.stages import evaluate
from c2ir.stages.collect_stats import ensure_stats
from c2ir.stages.common import Context
from c2ir.stages.synthesize import ensure_impressions
from c2ir.stages.train import ensure_trained
from c2ir.stages.weight_layers import ensure_weights


def run(cfg) -> None:
    ctx = Context(cfg)
    if ctx.uses_training:
        ensure_trained(ctx)
    ensure_impressions(ctx)
    ensure_stats(ctx)
    ensure_weights(ctx)
    evaluate.report_evaluation(ctx)
