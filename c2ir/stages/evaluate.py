"""Stage `evaluate`: score the ID test set and every OOD set with every configured detector.

One cached forward pass per dataset serves all detectors that score features; a detector that
scores images (ODIN, GAIA) has its own cached pass per set (IMAGE_SCORES). Detectors fit on the
impressions (data-free) or, for the full-access comparators, on real ID training features
(stages/fit.py). The scores and metrics are cached under a key of everything they depend on,
then written as reports into the Hydra run directory.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from c2ir import report
from c2ir.data import BatchStream
from c2ir.detectors import Detector
from c2ir.detectors.base import SPATIAL
from c2ir.errors import C2IRError
from c2ir.extraction import FeatureBundle
from c2ir.graph import Job, KeyRule, Node, Step, Use, key_of, plain, resolve
from c2ir.groups import groups_of
from c2ir.inputs import not_computable_detectors
from c2ir.metrics import accuracy, columnwise_auroc, ood_metrics
from c2ir.openood_export import write_openood_csvs
from c2ir.report_html import split_scores
from c2ir.stages.collect_stats import COLLECT_STATS
from c2ir.stages.features import FEATURES, ID_TRAIN, Pass, dataset, set_name
from c2ir.stages.fit import configured_detectors, fit_data, fit_uses, warn_thin_fit_data
from c2ir.stages.job import normalizer, num_workers
from c2ir.stages.report_page import write_run_page
from c2ir.stages.synthesize import SYNTHESIZE
from c2ir.synth_schedule import cost_summary
from c2ir.stages.train import MODEL, classifier, head
from c2ir.stages.weight_layers import WEIGHT_LAYERS
from c2ir.validation import ood_names

log = logging.getLogger(__name__)

# plus the evaluated sets' feature keys as upstream; `ood.<set>.name` is only the column's name
EVAL_RULE = KeyRule(("detectors", "ipm", "ood.*.name", "metrics"))


def build_detectors(job: Job, names: tuple[str, ...] | None = None) -> dict[str, Detector]:
    """The job's configured detectors (fresh, unfitted); a misspelled parameter fails here, before any compute."""
    return configured_detectors(job.cfg, names)


def datasets(job: Job) -> list[str]:
    """The evaluated data sets: the ID test set first, then the OOD sets in config order."""
    return ["id_test", *(f"ood:{key}" for key in ood_names(job.cfg))]


def passes(job: Job, dets: dict[str, Detector]) -> dict[str, Pass]:
    """{set name: the pass it is read from}: spatial vectors when a detector needs them, captured once
    when an `ipm=` sweep may need them (stages/features.py)."""
    spatial = int(job.cfg.features.spatial_grid) if any(SPATIAL in d.needs for d in dets.values()) else 0
    reuse = any(SPATIAL in d.may_need for d in dets.values())
    names = {d: set_name(job, d) for d in datasets(job)}
    if names["id_test"] in list(names.values())[1:]:
        raise C2IRError(f"an OOD set is named {names['id_test']!r} like the ID test set; rename it with ood.<set>.name")
    return {name: Pass(d, spatial, reuse) for d, name in names.items()}


# ----- image scores of the detectors that score images ----------------------------------------------
def _score_uses(job: Job, param: tuple[str, Pass]) -> dict[str, Use]:
    name, p = param
    det = build_detectors(job, (name,))[name]
    uses = {"features": Use(FEATURES, p), "model": Use(MODEL)}
    if det.requires_fit and det.fit_on != "none":  # fitted on impressions: their statistics decide the scores
        uses.update(collect_stats=Use(COLLECT_STATS), weight_layers=Use(WEIGHT_LAYERS, keyed=False),
                    synthesize=Use(SYNTHESIZE, keyed=False))
    if det.fit_on == "id_train":
        uses["features:id_train"] = Use(FEATURES, ID_TRAIN, keyed=False)
    return uses


def _score_images(step: Step, out: Any) -> dict:
    job, (name, p) = step.job, step.param
    det = build_detectors(job, (name,))[name].fit(fit_data(step))
    model, norm, hd = classifier(job), normalizer(job), head(job)
    stream = BatchStream(dataset(job, p.dataset), job.batch_size, num_workers(job), desc=set_name(job, p.dataset))
    s = np.concatenate([det.score_images(model, norm, b.images, job.batch_size, job.device, layers=job.layers, head=hd)
                        for b in stream if len(b.images)])   # per-image scores: batch by batch
    out.save_tensors("scores.safetensors", {"scores": torch.from_numpy(np.asarray(s, dtype=np.float64))})
    return {}


def _detector_spec(det: Detector) -> dict[str, Any]:
    return {"type": type(det).__name__, **det.params}   # resolved parameters, not the YAML overrides


# Cached per set under a key of the detector's whole config (type + parameters, not its display name),
# the set's features key and the model key; a detector fitted on impressions also on their statistics.
IMAGE_SCORES = Node("image_scores", version=2,
                    spec=lambda job, param: {"detector": _detector_spec(build_detectors(job, (param[0],))[param[0]])},
                    uses=_score_uses, build=_score_images,
                    load=lambda art, job, _: art.tensors("scores.safetensors")["scores"].numpy())


# ----- the evaluation ------------------------------------------------------------------------------------
def _uses(job: Job, names: tuple[str, ...]) -> dict[str, Use]:
    dets = build_detectors(job, names)
    read = passes(job, dets)
    uses = fit_uses(job, list(dets.values()))
    uses.update({f"features:{s}": Use(FEATURES, p) for s, p in read.items()})
    uses.update({f"image_scores:{n}:{s}": Use(IMAGE_SCORES, (n, p), keyed=False)
                 for n, d in dets.items() if d.needs_input_gradients for s, p in read.items()})
    return uses


def _spec(job: Job, names: tuple[str, ...]) -> dict[str, Any]:
    dets = build_detectors(job, names)
    return {"used": sorted(names), "sets": list(passes(job, dets)),
            "params": {n: _detector_spec(d) for n, d in dets.items()}}


def score_sets(step: Step, dets: dict[str, Detector], sets: dict[str, FeatureBundle]) -> dict[str, dict[str, np.ndarray]]:
    """{detector: {set: scores}}: each detector fitted once, then scoring every set."""
    fit = fit_data(step)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, det in dets.items():
        det.fit(fit)
        scores[name] = {s: (step.value(f"image_scores:{name}:{s}") if det.needs_input_gradients else det.score(bundle))
                        for s, bundle in sets.items()}
    return scores


def layer_auroc(dets: dict[str, Detector], sets: dict[str, FeatureBundle], id_set: str) -> dict[str, dict]:
    """Per detector that combines layers (C2IR): AUROC (%) of each layer's score alone, per OOD set (the report's
    evidence for the layer choice; AUROC is invariant to the per-layer normalisation)."""
    out = {}
    for name, det in dets.items():
        per_set = {s: det.layer_scores(bundle) for s, bundle in sets.items()}
        if per_set[id_set] is None or not all(torch.isfinite(v).all() for v in per_set.values()):
            continue
        out[name] = {"layers": list(det.layers),
                     "auroc": {o: columnwise_auroc(per_set[id_set].numpy(), v.numpy())
                               for o, v in per_set.items() if o != id_set}}
    return out


def _build(step: Step, out: Any) -> dict:
    job, names = step.job, step.param
    dets = build_detectors(job, names)
    sets = {s: step.value(f"features:{s}") for s in passes(job, dets)}
    id_set, oods = next(iter(sets)), list(sets)[1:]
    scores = score_sets(step, dets, sets)
    not_computable = not_computable_detectors(scores)
    scores = {d: v for d, v in scores.items() if d not in not_computable}  # no number is reported for them
    id_bundle = sets[id_set]
    id_acc = accuracy(id_bundle["logits"].numpy(), id_bundle["labels"].numpy())
    positive = str(job.cfg.metrics.fpr_positive)
    result = {"id_set": id_set, "id_accuracy": id_acc, "ood_sets": oods,
              "metrics": {d: {o: ood_metrics(per[id_set], per[o], positive) for o in oods} for d, per in scores.items()},
              "fpr_positive": positive, "access": {n: d.data_access for n, d in dets.items()}, "ipm": plain(job.cfg.ipm),
              "mgi": plain(job.cfg.mgi), "layer_weights": step.input("weight_layers").artifact.json("weights.json"),
              "counts": {s: int(len(b["logits"])) for s, b in sets.items()}, "layer_auroc": layer_auroc({n: d for n, d in dets.items() if n not in not_computable}, sets, id_set),
              "not_computable": not_computable,
              "c2ir_fit": {n: f for n, d in dets.items() if (f := d.fit_summary()) is not None}}
    out.save_tensors("scores.safetensors", {f"{d}/{s}": torch.from_numpy(np.ascontiguousarray(v))
                                            for d, per in scores.items() for s, v in per.items()})
    out.save_json("results.json", result)
    return {"id_accuracy": id_acc}


EVALUATE = Node("evaluate", version=5, rule=EVAL_RULE, spec=_spec, uses=_uses, build=_build,
                load=lambda art, job, _: art.json("results.json"), seed=lambda job: job.seed)


def available(job: Job) -> tuple[str, ...]:
    """The configured detectors that can run: full-access ones are skipped (with a warning) when the ID
    training split is unavailable."""
    dets = build_detectors(job)
    full = [n for n, d in dets.items() if d.fit_on == "id_train"]
    if full:
        resolve(MODEL, job)  # a model that cannot be had is an error of its own, not a reason to skip
        try:
            train = resolve(FEATURES, job, ID_TRAIN).value
        except C2IRError as exc:
            log.warning("full-access detectors %s skipped: ID training data unavailable (%s)", full, exc)
            return tuple(n for n in dets if n not in full)
        # on every run, cached or not: the rows stay as thin as their fit data
        warn_thin_fit_data(train, OmegaConf.select(job.cfg, "data.num_classes"),
                           OmegaConf.select(job.cfg, "evaluate.max_train_samples"))
    return tuple(dets)


def run(job: Job) -> dict:
    """Evaluate (or load the cached evaluation) and write the reports into the run directory.

    Tables (md/csv/json) first, then the pictures and report.html, so a failing plot costs no result.
    `report.figures=false` skips the pictures and the page: in a sweep they are most of each job's own
    cost (docs/BENCHMARKS.md section 6), while `c2ir report <sweep dir>` needs only the tables.
    """
    cfg = job.cfg
    evaluation = resolve(EVALUATE, job, available(job))
    result = {**evaluation.value, "groups": groups_of(cfg)}  # near/far: presentation, from the config
    if not job.dist.is_main:
        return result
    run_dir = report.run_dir(cfg)
    synth = job.store.lookup("synthesize", key_of(SYNTHESIZE, job))   # read, never built, for the report
    if synth is not None:  # the run directory's copy only (c2ir report plots quality against this cost)
        result["synthesis"] = cost_summary(synth)
    grid = None if synth is None else synth.file("impressions_grid.png")
    with report.reports_in_progress(run_dir):   # a marker while the folder is incomplete (a kill leaves it)
        if grid is not None and grid.is_file():
            shutil.copy2(grid, run_dir / "impressions_grid.png")
        report.write_reports(run_dir, result)
        if result["groups"]:
            write_openood_csvs(run_dir / "openood", result, split_scores(evaluation.artifact.tensors("scores.safetensors")))
        print(report.terminal_table(result))
        if few := report.few_samples_line(result):
            log.warning("%s", few)
        if OmegaConf.select(cfg, "report.figures", default=True) and write_run_page(job, evaluation.artifact,
                                                                                    run_dir) is None:
            # the marker stays: the folder must not look finished (a full disk used to end in "reports written")
            raise C2IRError(f"report.html could not be written in {run_dir} (the warning above says why); results.md, "
                            ".csv and .json are complete. Free disk space (or fix the cause) and rerun the same "
                            "command: everything else is cached")
    log.info("reports written to %s", run_dir)
    return result
