"""What the offline detector scripts share (threshold_tpr.py, proxy_criterion.py, threshold_raw_reference.py):
compose a config as `c2ir evaluate` does, build its detectors, and load the fit data and every data set's
features from the stages' cache (a missing artifact is computed). The detectors are returned unfitted."""

from __future__ import annotations

from typing import Any

from hydra import compose, initialize_config_dir

from c2ir.config import config_dir
from c2ir.graph import resolve
from c2ir.stages.evaluate import build_detectors, passes
from c2ir.stages.features import FEATURES
from c2ir.stages.fit import fit_for
from c2ir.stages.job import cli_job


def fitted_setup(overrides: list[str]) -> tuple[Any, dict, Any, dict]:
    """(job, detectors by name, fit data, features by set name: the ID test set first, then the OOD sets)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    job = cli_job(cfg)
    dets = build_detectors(job)
    fit = fit_for(job, list(dets.values()))
    sets = {name: resolve(FEATURES, job, p).value for name, p in passes(job, dets).items()}
    return job, dets, fit, sets
