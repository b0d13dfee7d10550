"""One module per stage: its artifact node (key rule, inputs, build, load: c2ir.graph) and its task
`run(job) -> result`, which the CLI's one Hydra task calls for `cfg.stage`."""

from __future__ import annotations

import importlib

STAGES: dict[str, tuple[str, str]] = {
    "train": ("c2ir.stages.train", "train, or fine-tune from model.checkpoint, the classifier on the ID train split"),
    "synthesize": ("c2ir.stages.synthesize", "invert the classifier into class-conditional impressions (DeepInversion)"),
    "collect-stats": ("c2ir.stages.collect_stats", "per-layer, per-class feature statistics of the impressions"),
    "weight-layers": ("c2ir.stages.weight_layers", "MGI layer weights from gradients on the impressions only"),
    "evaluate": ("c2ir.stages.evaluate", "score ID and OOD sets with every detector; write tables and plots"),
    "score": ("c2ir.stages.score", "score a folder of images with a fitted detector: score.input=DIR -> scores.csv"),
    "run": ("c2ir.stages.run", "all stages in order, each skipped when its artifact is cached"),
}


def stage_task(stage: str):
    """The `run(job)` function of stage `stage`."""
    return importlib.import_module(STAGES[stage][0]).run


def load_all() -> None:
    """Import every stage module, so every node's KeyRule is registered (graph.uncovered_fields)."""
    for module, _ in STAGES.values():
        importlib.import_module(module)
