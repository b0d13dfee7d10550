"""Stage `run`: every stage in order (evaluate resolves them all); each is a cache hit when its artifact exists."""

from __future__ import annotations

from c2ir.data import load_id, load_ood
from c2ir.extraction import require_batchnorm
from c2ir.graph import Job
from c2ir.models.loading import build_classifier
from c2ir.stages import evaluate


def check_folders(job: Job) -> None:
    """List the ID test split and the OOD folder sets before any synthesis: a missing or empty folder
    is reported (with its expected layout) in seconds, not after hours of synthesis. Listing only:
    nothing is decoded."""
    cfg = job.cfg
    if cfg.data.source in ("imagefolder", "shared", "imglist"):
        load_id(cfg.data, "test")
    for name in cfg.ood:
        if cfg.ood[name].get("source") in ("folder", "imglist"):
            load_ood(name, cfg.ood[name], cfg.data)


def run(job: Job) -> dict:
    check_folders(job)
    evaluate.build_detectors(job)  # a misspelled detector parameter fails here, not after training and synthesis
    cfg = job.cfg
    require_batchnorm(build_classifier(cfg.model, int(cfg.data.num_classes)),   # before any training
                      str(cfg.model.get("name") or cfg.model.arch))
    return evaluate.run(job)
