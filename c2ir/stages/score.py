"""Stage `score`: deploy a fitted detector on a folder of images.

    c2ir score <the same overrides as evaluate> score.input=DIR [score.detector=energy] [score.tpr=0.95]

The detector is fitted exactly as `evaluate` fits it and cached as its own artifact
(stages/fit.py: FITTED, `score/<key>`, in the saved-detector format that `c2ir.load_detector`
reads). The threshold is data-free, set by `c2ir.threshold.data_free_threshold` (the rule
`predict()` uses): the score that a share of softened impressions stays below (for C2IR,
impressions held back from the statistics; `score.tpr`, or for `c2ir` the lower share where a real `score.tpr`
is estimated to sit); the summary line names the rule and the ID TPR to expect. Every readable image under DIR gets a row of `scores.csv` in the run directory
(relative path, predicted class, score, OOD decision); unreadable files are skipped, logged
and listed in `skipped.txt`, and one summary line says how many images were flagged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from c2ir import report
from c2ir.cache import atomic_write_bytes
from c2ir.data.folders import decode_many
from c2ir.detectors import Detector, detector_config
from c2ir.errors import C2IRError
from c2ir.extraction import extract_features
from c2ir.graph import Job, plain, resolve
from c2ir.inputs import nonfinite_problem
from c2ir.names import escape_name
from c2ir.stages.fit import FITTED, FitRequest, ipm_overrides
from c2ir.stages.job import normalizer
from c2ir.stages.train import classifier, head
from c2ir.threshold import NotComputableError

log = logging.getLogger(__name__)


def fit_request(job: Job) -> FitRequest:
    """`score.detector` with its config: the composed `detectors.<name>` if selected (CLI overrides
    apply), else its YAML."""
    cfg = job.cfg
    name = str(cfg.score.detector)
    config = plain(cfg.detectors[name]) if name in (cfg.get("detectors") or {}) else detector_config(name)
    return FitRequest.of(name, config, ipm_overrides(cfg), float(cfg.score.tpr))


def input_files(root: Path) -> list[Path]:
    """Every (non-hidden) file under `root`: what is not an image is reported as unreadable, not ignored."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def score_folder(job: Job, det: Detector, root: Path, paths: list[Path]
                 ) -> tuple[list[str], torch.Tensor, np.ndarray, list[str]]:
    """(relative paths, predicted classes, scores, unreadable relative paths) of the images `paths` under `root`."""
    cfg = job.cfg
    images, keep = decode_many(paths, int(cfg.data.image_size), int(cfg.data.channels), str(cfg.score.resize),
                               job.seed, str(root))
    rel = [str(p.relative_to(root)) for p in paths]
    skipped = [rel[i] for i in sorted(set(range(len(paths))) - set(keep))]
    model, norm, hd = classifier(job), normalizer(job), head(job)
    grid = int(cfg.features.spatial_grid)
    if det.needs_input_gradients:  # its own gradient pass; the classes from a plain forward pass
        logits = extract_features(model, images, norm, [], hd, batch_size=job.batch_size, device=job.device,
                                  with_bn=False, desc=f"classes {root.name}")["logits"]
        scores = det.score_images(model, norm, images, job.batch_size, job.device, layers=job.layers, head=hd,
                                  spatial_grid=grid)
    else:  # one forward pass gives both the classes and the detector's features
        feats = det.image_features(model, norm, images, job.batch_size, job.device, layers=job.layers, head=hd,
                                   spatial_grid=grid)
        logits, scores = feats["logits"], det.score(feats)
    return [rel[i] for i in keep], logits.argmax(1), scores, skipped


def run(job: Job) -> dict:
    cfg = job.cfg
    root = Path(str(cfg.score.input)).expanduser()  # set, a folder, not empty: checked by validation.check_inputs
    files = input_files(root)
    req = fit_request(job)
    try:
        fitted = resolve(FITTED, job, req)
    except NotComputableError as exc:
        raise C2IRError(f"detector {req.name} is not computable on {exc}, so it has no threshold; check its "
                        "parameters (e.g. a temperature or weight) or score with another score.detector") from None
    thr = fitted.value.threshold_info
    threshold = float(fitted.value.threshold)
    size, channels = int(cfg.data.image_size), int(cfg.data.channels)
    log.info("score: every image is converted to the model's input: %s, %dx%d px (score.resize=%s); images of "
             "another size or colour mode are converted, not refused", "grayscale" if channels == 1 else
             f"{channels} channels", size, size, cfg.score.resize)
    paths, pred, scores, skipped = score_folder(job, fitted.value.detector, root, files)
    ood = ~(scores <= threshold)  # a NaN score is never called in-distribution
    if problem := nonfinite_problem(scores):
        log.warning("score: %s; those images are flagged as OOD", problem)
    run_dir = report.run_dir(cfg)
    report.write_scores_csv(run_dir / "scores.csv", paths, pred.tolist(), scores.tolist(), ood.tolist())
    if skipped:  # one escaped name per line: a name with a newline cannot split an entry
        atomic_write_bytes(run_dir / "skipped.txt", ("\n".join(escape_name(p) for p in skipped) + "\n").encode())
        for p in skipped:
            log.warning("score: skipped unreadable file %s", escape_name(p))
    summary = {"input": str(root), "detector": req.name, "threshold": threshold, "tpr": req.tpr,
               "threshold_rule": thr.rule, "expected_id_tpr": list(thr.expected), "threshold_level": thr.level,
               "reference_shift": thr.shift, "scored": len(paths),
               "flagged_ood": int(ood.sum()), "skipped": skipped, "detector_artifact": str(fitted.artifact.path)}
    atomic_write_bytes(run_dir / "score_summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(f"c2ir score: {int(ood.sum())} of {len(paths)} images flagged as OOD by {req.name} "
          f"({thr.describe()})"
          + (f"; {len(skipped)} unreadable file(s) skipped, listed in skipped.txt" if skipped else "")
          + f"; scores in {run_dir / 'scores.csv'}")
    return summary
