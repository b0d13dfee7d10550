"""Stage `score`: deploy a fitted detector on a folder of images.

    c2ir score <the same overrides as evaluate> score.input=DIR [score.detector=energy] [score.tpr=0.95]

The detector is fitted exactly as `evaluate` fits it (from the cached impressions,
statistics, MGI weights, and ID training features for the full-access ones) and cached
as its own artifact (`score/<key>`: its fitted tensors and threshold). The threshold
is data-free, set by `c2ir.threshold.data_free_threshold` (the rule `predict()` uses): the
score that a share `score.tpr` of softened impressions stays below (for C2IR, impressions held
back from the statistics); the summary line names the rule and the ID TPR to expect. Every
readable image under DIR gets a row of `scores.csv` in the run directory (relative path,
predicted class, score, OOD decision); unreadable files are skipped, logged and listed
in `skipped.txt`, and one summary line says how many images were flagged.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from c2ir import report
from c2ir.api import zoo_config
from c2ir.cache import Artifact, atomic_save_tensors, atomic_write_bytes, atomic_write_json, make_key
from c2ir.data.folders import decode_many
from c2ir.detectors import Detector, build_detector
from c2ir.detectors.base import BN_MEANS, INPUT_GRADIENTS, POOLED_LAYERS, SPATIAL
from c2ir.errors import C2IRError
from c2ir.extraction import extract_features
from c2ir.names import csv_cell, escape_name
from c2ir.stages.common import RunContext, plain
from c2ir.stages import synthesize
from c2ir.stages.evaluate import FitInputs, ipm_overrides
from c2ir.threshold import NotComputableError, Threshold, data_free_threshold
from c2ir.validation import nonfinite_problem

log = logging.getLogger(__name__)
SCORE_VERSION = 2   # 2: the threshold rule of c2ir.threshold (issue 21)


def score_settings(cfg) -> dict:
    s = plain(cfg.get("score")) or {}
    tpr = float(s.get("tpr", 0.95))
    if not 0.0 < tpr < 1.0:
        raise C2IRError(f"score.tpr={tpr}; choose the share of ID inputs to keep, strictly between 0 and 1")
    root = Path(str(s["input"])).expanduser()  # set, a folder, not empty: checked by schema.check_inputs
    return {"input": root, "detector": str(s.get("detector", "c2ir")), "tpr": tpr,
            "resize": str(s.get("resize", "resize"))}


def detector_config(cfg, name: str) -> dict:
    """The detector's config: the composed `detectors.<name>` if selected (CLI overrides apply), else its YAML."""
    if name in (cfg.get("detectors") or {}):
        return plain(cfg.detectors[name])
    return zoo_config(name)


def ensure(ctx: RunContext, name: str, tpr: float) -> tuple[Detector, Threshold, Artifact]:
    """Detector `name` fitted as `evaluate` fits it, and its data-free threshold at `tpr`, via the cache
    (the `score` artifact: fitted tensors + threshold)."""
    det = build_detector(name, detector_config(ctx.cfg, name), **ipm_overrides(ctx))
    inputs = FitInputs(ctx, {name: det})
    art_key = make_key("score", {"v": SCORE_VERSION, "type": type(det).__name__, "params": det.params, "tpr": tpr},
                   inputs.upstream())

    def build(out: Path) -> dict:
        fit = inputs.fit_context()
        det.fit(fit)
        images = fit.impression_images if fit.impression_images is not None else synthesize.load(synthesize.ensure(ctx))[0]
        try:
            threshold = data_free_threshold(det, tpr, lambda pixels: score_images(ctx, det, pixels)[0], images,
                                            lambda: score_images(ctx, det, images)[0])
        except NotComputableError as exc:
            raise C2IRError(f"detector {name} is not computable on {exc}, so it has no threshold; check its "
                            "parameters (e.g. a temperature or weight) or score with another score.detector") from None
        atomic_save_tensors(out / "state.safetensors", {k: v.contiguous() for k, v in det.state().items()})
        atomic_write_json(out / "detector.json", {"name": name, "type": type(det).__name__, "params": det.params,
                                                  "threshold": threshold.value, "tpr": tpr,
                                                  "threshold_info": threshold.to_json()})
        return {"threshold": threshold.value, "rule": threshold.rule}

    art = ctx.store.get_or_create("score", art_key, build, config={"detector": name, "params": det.params, "tpr": tpr},
                                  upstream=inputs.upstream(), seed=ctx.seed)
    if not det._fitted:  # a cache hit: restore the fitted state (or refit a detector that declares none)
        if type(det).state is Detector.state:
            det.fit(inputs.fit_context())
        else:
            det.load_state(art.tensors("state.safetensors"))
    return det, Threshold.from_json(art.json("detector.json")["threshold_info"]), art


def input_files(root: Path) -> list[Path]:
    """Every (non-hidden) file under `root`: what is not an image is reported as unreadable, not ignored."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def score_images(ctx: RunContext, det: Detector, images: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """(scores, predicted classes) of pixel images (uint8 or [0, 1] floats) by a fitted detector."""
    needs = det.needs
    layers = ctx.layers if (POOLED_LAYERS in needs or SPATIAL in needs) else []
    feats = extract_features(ctx.model, images, ctx.normalizer, layers, ctx.head, batch_size=ctx.batch_size,
                             device=ctx.device, spatial_grid=int(ctx.cfg.features.spatial_grid) if SPATIAL in needs else 0,
                             with_bn=BN_MEANS in needs, desc="features")
    if INPUT_GRADIENTS in needs:
        scores = det.score_images(ctx.model, ctx.normalizer, images, ctx.batch_size, ctx.device)  # type: ignore[attr-defined]
    else:
        scores = det.score(feats)
    return scores, feats["logits"].argmax(1)


def score_folder(ctx: RunContext, det: Detector, root: Path, paths: list[Path], resize: str
                 ) -> tuple[list[str], torch.Tensor, np.ndarray, list[str]]:
    """(relative paths, predicted classes, scores, unreadable relative paths) of the images `paths` under `root`."""
    cfg = ctx.cfg
    images, keep = decode_many(paths, int(cfg.data.image_size), int(cfg.data.channels), resize, int(cfg.seed), str(root))
    rel = [str(p.relative_to(root)) for p in paths]
    skipped = [rel[i] for i in sorted(set(range(len(paths))) - set(keep))]
    scores, pred = score_images(ctx, det, images)
    return [rel[i] for i in keep], pred, scores, skipped


def write_scores_csv(path: Path, paths: list[str], pred: list[int], scores: list[float], ood: list[bool]) -> None:
    """`scores.csv`: one row per image. The `path` cell is `names.csv_cell(relative path)`: control characters
    escaped, and a leading `'` when it would start with = + - @ tab CR or ' (OWASP CSV injection), so no
    spreadsheet evaluates it; `names.csv_uncell` gives the file name back exactly."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_MINIMAL)
    w.writerow(["path", "predicted_class", "score", "ood"])
    for p, c, s, o in zip(paths, pred, scores, ood):
        w.writerow([csv_cell(p), c, repr(float(s)), int(o)])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def run(cfg) -> None:
    ctx = RunContext(cfg)  # validates the config: score.input set, a folder, not empty (schema.check_inputs)
    settings = score_settings(ctx.cfg)
    files = input_files(settings["input"])
    det, thr, art = ensure(ctx, settings["detector"], settings["tpr"])
    threshold = thr.value
    paths, pred, scores, skipped = score_folder(ctx, det, settings["input"], files, settings["resize"])
    ood = ~(scores <= threshold)  # a NaN score is never called in-distribution
    if nonfinite_problem(scores):
        log.warning("score: %s; those images are flagged as OOD", nonfinite_problem(scores))
    run_dir = report.run_dir(cfg)
    write_scores_csv(run_dir / "scores.csv", paths, pred.tolist(), scores.tolist(), ood.tolist())
    if skipped:  # one escaped name per line: a name with a newline cannot split an entry
        atomic_write_bytes(run_dir / "skipped.txt", ("\n".join(escape_name(p) for p in skipped) + "\n").encode())
        for p in skipped:
            log.warning("score: skipped unreadable file %s", escape_name(p))
    atomic_write_bytes(run_dir / "score_summary.json", (json.dumps(
        {"input": str(settings["input"]), "detector": settings["detector"], "threshold": threshold,
         "tpr": settings["tpr"], "threshold_rule": thr.rule, "expected_id_tpr": list(thr.expected),
         "scored": len(paths), "flagged_ood": int(ood.sum()), "skipped": skipped,
         "detector_artifact": str(art.path)}, indent=2) + "\n").encode())
    print(f"c2ir score: {int(ood.sum())} of {len(paths)} images flagged as OOD by {settings['detector']} "
          f"({thr.describe()})"
          + (f"; {len(skipped)} unreadable file(s) skipped, listed in skipped.txt" if skipped else "")
          + f"; scores in {run_dir / 'scores.csv'}")
