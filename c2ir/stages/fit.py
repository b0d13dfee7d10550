"""What a detector fits on, and the fitted detector as an artifact.

`fit_uses` and `fit_data` are the one place a FitData is assembled (from the impressions'
statistics and features, the MGI weights, the impressions' pixels, real ID features for
full access): `c2ir evaluate`, `c2ir score` and the Python API all fit through them.

FITTED is the fitted detector with its threshold (`score/<key>`: `state.safetensors` and
`detector.json`). That pair is also the saved-detector format of the API (`save`/`load`), so
a detector fitted by `c2ir score` loads with `c2ir.load_detector`, and one fitted by
`c2ir.detector(...).fit()` is the same artifact made in memory. The threshold is set by the
one rule of `c2ir.threshold` (`data_free_threshold`: softened held-back impressions for C2IR, for `c2ir` at a
shifted quantile, softened impressions otherwise), or, without impressions, in-sample on the fit data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from omegaconf.errors import OmegaConfBaseException

from c2ir import saved
from c2ir.detectors import Detector, FitData, build_detector
from c2ir.detectors.base import IMPRESSION_IMAGES, INPUT_GRADIENTS
from c2ir.errors import C2IRError
from c2ir.graph import Job, KeyRule, Node, Step, Use, plain, resolve
from c2ir.schema import SynthConfig
from c2ir.stages.collect_stats import COLLECT_STATS
from c2ir.stages.features import FEATURES, ID_TRAIN
from c2ir.stages.job import normalizer
from c2ir.stages.synthesize import SYNTHESIZE
from c2ir.stages.train import MODEL, classifier, head
from c2ir.stages.weight_layers import WEIGHT_LAYERS
from c2ir.threshold import Threshold, data_free_threshold, quantile_threshold
from c2ir.validation import explain

log = logging.getLogger(__name__)

FORMAT_VERSION = saved.FORMAT_VERSION
# the fitted detector's key holds its resolved type and parameters and the threshold's share
# (spec below), not the config names: a renamed config with the same parameters is the same artifact
FITTED_RULE = KeyRule(("score.detector", "score.tpr"))
IPM_PARAMETERS = {"name": "ipm", "seed": "ipm_seed", "projections": "ipm_projections"}


def ipm_overrides(cfg: Any) -> dict[str, Any]:
    """The `ipm=` group as detector parameters, for the detector types that declare them (C2IR).
    Only what the group sets is passed (null: unset): C2IR's typed constructor holds the defaults."""
    ipm = plain(cfg.get("ipm")) or {}
    return {IPM_PARAMETERS[k]: v for k, v in ipm.items() if k in IPM_PARAMETERS and v is not None}


def configured_detectors(cfg: Any, names: tuple[str, ...] | None = None) -> dict[str, Detector]:
    """The configured detectors (fresh, unfitted; constructors only) of a composed config: what a job fits, and what
    the CLI builds before Hydra starts (`cli.check_detectors`), so a bad parameter is one line either way, an
    unresolvable interpolation in a detector's values included."""
    if not cfg.get("detectors"):
        raise C2IRError("no detectors selected (detectors=[]); pass at least one, e.g. detectors=[c2ir,energy,msp]")
    where = "ipm"
    try:
        extra = ipm_overrides(cfg)
        dets = {}
        for name in names or cfg.detectors:
            where = f"detectors.{name}"
            dets[name] = build_detector(name, plain(cfg.detectors[name]), **extra)
        return dets
    except OmegaConfBaseException as exc:   # e.g. ++detectors.energy.temperature='${oc.env:UNSET}'
        raise C2IRError(f"{where}: {explain(exc)}") from None


def wants_images(det: Detector) -> bool:
    """The impressions' pixels: to fit on (C2IR's weight selection) or to score (gradient detectors)."""
    return bool({IMPRESSION_IMAGES, INPUT_GRADIENTS} & det.needs)


def fit_uses(job: Job, dets: list[Detector]) -> dict[str, Use]:
    """The inputs detectors fit on: the impressions' statistics and MGI weights (when the job has
    impressions), the model, real ID features for full access, the impressions' pixels (read only)."""
    uses: dict[str, Use] = {}
    if job.synthesis:
        uses.update(collect_stats=Use(COLLECT_STATS), weight_layers=Use(WEIGHT_LAYERS))
    if any(d.fit_on == "id_train" for d in dets):
        uses["features:id_train"] = Use(FEATURES, ID_TRAIN)
    uses["model"] = Use(MODEL)
    if job.synthesis and any(wants_images(d) for d in dets):
        uses["synthesize"] = Use(SYNTHESIZE, keyed=False)
    return uses


MIN_FIT_PER_CLASS = 2   # a class mean and a spread need at least two images


def warn_thin_fit_data(id_train: Any, num_classes: int | None, setting: Any = None) -> None:
    """A warning when the ID training images the full-access detectors fit on miss classes or hold fewer than
    MIN_FIT_PER_CLASS of one (`evaluate.max_train_samples=1` gave numbers with no word of it). `setting`: the
    configured `evaluate.max_train_samples`, named in the fix only when it is what cut the set."""
    labels = id_train.get("labels") if hasattr(id_train, "get") else None
    if labels is None or not len(labels):
        return
    labels = torch.as_tensor(labels).long().flatten()
    k = int(num_classes) if isinstance(num_classes, int) else int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=k)
    thin = int((counts < MIN_FIT_PER_CLASS).sum())
    if thin:
        fix = (f"raise evaluate.max_train_samples (now {setting})" if setting is not None
               else "give the ID training split more images of every class")
        log.warning("full-access detectors are fitted on %d ID training image(s), %d of %d classes with fewer than %d: "
                    "their rows are not meaningful; %s", int(counts.sum()), thin, k, MIN_FIT_PER_CLASS, fix)


def fit_data(step: Step) -> FitData:
    """FitData from a step's inputs (the roles of `fit_uses`); what the step does not read stays None."""
    job = step.job
    stats = imp = weights = images = id_train = None
    layers = list(job.layers)
    if step.has("collect_stats"):
        stats, imp = step.value("collect_stats")
    if step.has("weight_layers"):
        layers, weights = step.value("weight_layers")
        if stats is not None and layers != stats.layers:
            raise C2IRError("MGI weights and class statistics were computed for different layer sets; rerun `c2ir run`")
    if step.has("synthesize"):
        images = step.value("synthesize").images
    if step.has("features:id_train"):
        id_train = step.value("features:id_train")
    return FitData(model=classifier(job), layers=layers, impressions=imp, id_train=id_train, class_stats=stats,
                   layer_weights=weights, head=head(job), impression_images=images, normalizer=normalizer(job),
                   batch_size=job.batch_size, device=job.device)


def fit_for(job: Job, dets: list[Detector]) -> FitData:
    """The FitData `dets` fit on, outside a build (scripts and tools that study detectors on the cache)."""
    uses = fit_uses(job, dets)
    step = Step(job, FITTED, None, "", {r: resolve(u.node, job, u.param) for r, u in uses.items() if u.keyed},
                {r: u for r, u in uses.items() if not u.keyed})
    return fit_data(step)


def pixel_scorer(step: Step, det: Detector, data: FitData) -> tuple[Any, Any]:
    """(score_pixels, impression images): what the data-free threshold rules score (images in [0, 1])."""
    job = step.job
    images = data.impression_images
    if images is None and job.synthesis:
        images = resolve(SYNTHESIZE, job).value.images

    def score_pixels(pixels: Any) -> np.ndarray:
        return det.score_images(data.model, data.normalizer, pixels, job.batch_size, job.device,
                                layers=list(data.layers), head=data.head,
                                spatial_grid=int(job.cfg.features.spatial_grid))

    return score_pixels, images


def fitted_threshold(step: Step, det: Detector, data: FitData, tpr: float) -> Threshold | None:
    """The threshold of a fitted detector by the rules of `c2ir.threshold`: data-free when the job has
    impressions (softened held-back impressions, softened impressions, or the impressions themselves),
    else in-sample on the ID data it was fitted on, else none (call `calibrate` in the API).
    NotComputableError when the reference scores hold NaN or infinite values."""
    if data.impressions is not None:
        score_pixels, images = pixel_scorer(step, det, data)
        return data_free_threshold(det, tpr, score_pixels, images, lambda: det.score_impressions(data))
    if data.id_train is not None:
        return quantile_threshold(det.score(data.id_train), tpr, "fit_data")
    return None


@dataclass(frozen=True)
class FitRequest:
    """Which detector to fit (its config name and resolved config, and parameters supplied from elsewhere
    such as the `ipm=` group), and the share of ID inputs its threshold keeps."""

    name: str
    config: str       # canonical JSON of the detector's config (`type` + parameter overrides)
    extra: str = "{}"
    tpr: float = 0.95

    @classmethod
    def of(cls, name: str, config: dict[str, Any], extra: dict[str, Any] | None = None, tpr: float = 0.95) -> "FitRequest":
        return cls(name, json.dumps(config, sort_keys=True), json.dumps(extra or {}, sort_keys=True), float(tpr))

    def detector(self) -> Detector:
        return build_detector(self.name, json.loads(self.config), **json.loads(self.extra))


@dataclass
class Fitted:
    """A fitted detector with its threshold (`threshold_info`: the rule that set it and what it promises)."""

    detector: Detector
    threshold: float | None
    threshold_source: str | None
    layer_weights: list[float] | None = None
    threshold_info: Threshold | None = None


def job_settings(job: Job) -> dict[str, Any]:
    """What a saved detector records about how it was fitted: the API's keyword arguments."""
    cfg = job.cfg
    return {"layers": list(job.layers), "layer_patterns": job.layer_patterns, "head": cfg.model.get("head"),
            "num_classes": cfg.data.get("num_classes"),
            "input_shape": None if job.input_shape is None else list(job.input_shape),
            "mean": plain(cfg.model.get("mean")), "std": plain(cfg.model.get("std")),
            "synth": asdict(SynthConfig.from_cfg(cfg.synth)), "mgi": str(cfg.mgi.method),
            "spatial_grid": int(cfg.features.spatial_grid),
            "max_spatial_per_class": int(cfg.collect_stats.max_spatial_per_class),
            "batch_size": job.batch_size, "seed": job.seed}


def restore(det: Detector, tensors: dict[str, Any], refit: FitData) -> Detector:
    """A detector's fitted state from saved tensors; one that declares no state (it fits on the model
    alone: ODIN, GAIA, the logit scores) is fitted again on `refit`."""
    if type(det).state is Detector.state:
        return det.fit(refit)
    det.load_state(tensors)
    return det


def _build(step: Step, out: Any) -> dict:
    req: FitRequest = step.param
    det = req.detector()
    data = fit_data(step)
    det.fit(data)
    info = fitted_threshold(step, det, data, req.tpr)
    if info is not None:
        log.info("%s: %s", req.name, info.describe())
    weights = None if data.layer_weights is None else [float(w) for w in data.layer_weights.tolist()]
    fitted = Fitted(det, None if info is None else info.value, None if info is None else info.rule, weights, info)
    saved.write_saved(out, fitted, req.name, job_settings(step.job), req.tpr, classifier(step.job))
    step.keep(fitted)
    return {"threshold": fitted.threshold, "rule": fitted.threshold_source}


def _load(art: Any, job: Job, req: FitRequest) -> Fitted:
    saved_cfg = art.json(saved.CONFIG)
    det = restore(req.detector(), art.tensors(saved.STATE),
                  FitData(model=classifier(job), layers=list(job.layers), head=head(job)))
    info = saved_cfg.get("threshold_info")
    return Fitted(det, saved_cfg["threshold"], saved_cfg["threshold_source"], saved_cfg.get("layer_weights"),
                  None if info is None else Threshold.from_json(info))


def _spec(job: Job, req: FitRequest) -> dict[str, Any]:
    det = req.detector()
    return {"type": type(det).__name__, "params": det.params, "tpr": req.tpr}


FITTED = Node("score", version=2,  # 2: the threshold rules of c2ir.threshold (issue 21)
              spec=_spec, uses=lambda job, req: fit_uses(job, [req.detector()]),
              build=_build, load=_load, seed=lambda job: job.seed)
