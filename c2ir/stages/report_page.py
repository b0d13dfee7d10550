"""Gather what the run page shows from the cached artifacts, then write `report.html`.

Why separate from `evaluate`: the page is a view over several artifacts (evaluate's
scores and results, synthesis impressions and loss curves, the MGI weights inside the
results) plus the config; each piece that cannot be loaded becomes a note on the page.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from c2ir import plots
from c2ir.cache import Artifact, make_key
from c2ir.graph import Job, resolve
from c2ir.groups import groups_of
from c2ir.report_html import RunInputs, split_scores, write_run_report
from c2ir.stages.synthesize import SYNTHESIZE
from c2ir.stages.train import MODEL

log = logging.getLogger(__name__)


def config_yaml(cfg) -> str:
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside Hydra: show it unresolved
        return OmegaConf.to_yaml(cfg)


def run_inputs(job: Job, art: Artifact) -> RunInputs:
    """The page's inputs; missing pieces are left None with a note saying why."""
    inp = RunInputs(result={**art.json("results.json"), "groups": groups_of(job.cfg)}, config_yaml=config_yaml(job.cfg),
                    published=OmegaConf.select(job.cfg, "report.published", default=None))
    inp.keys = {"evaluate": art.key, **{k: str(v) for k, v in art.manifest.get("upstream", {}).items()}}
    try:
        inp.scores = split_scores(art.tensors("scores.safetensors"))
    except Exception as exc:
        inp.notes.append(f"Scores could not be loaded from the evaluate artifact ({exc}).")
    try:
        inp.keys["model"] = resolve(MODEL, job).key
        synth = resolve(SYNTHESIZE, job).artifact
    except Exception as exc:
        synth = None
        inp.notes.append(f"The synthesis artifact could not be located ({exc}).")
    if synth is not None:
        inp.keys["synthesize"] = synth.key
        try:
            t = synth.tensors("impressions.safetensors")
            inp.impressions = {k: t[k].numpy() for k in ("images", "targets", "predicted")}
        except Exception as exc:
            inp.notes.append(f"Impressions could not be loaded ({exc}).")
        try:
            inp.curves = {k: v.numpy().astype(np.float64) for k, v in synth.tensors("curves.safetensors").items()}
            inp.synth_summary = synth.json("summary.json")
        except Exception as exc:
            inp.notes.append(f"Synthesis curves or summary could not be loaded ({exc}).")
    # figures depend only on the evaluate and synthesis artifacts, the near/far groups (the summary figure's
    # columns) and the plotting code
    fig_key = make_key("report_figures", {"v": plots.VERSION, "groups": inp.result["groups"]},
                       {"evaluate": art.key, "synthesize": inp.keys.get("synthesize", "")})
    inp.figure_cache = job.store.dir("report_figures", fig_key)
    return inp


def write_run_page(job: Job, art: Artifact, run_dir: Path) -> Path | None:
    """report.html (+ roc_*.png, hist_*.png) in the run directory; never raises (a warning instead)."""
    try:
        inp = run_inputs(job, art)
    except Exception as exc:
        log.warning("report: report.html not written: its inputs could not be loaded (%s)", exc)
        return None
    return write_run_report(run_dir, inp)
