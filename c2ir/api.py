"""The public Python API: C2IR and every detector of the zoo on any model, from user code.

    import c2ir
    det = c2ir.C2IR(model, num_classes=10, input_shape=(3, 32, 32), mean=MEAN, std=STD).fit()
    scores = det.score(x)          # x: a batch as the model takes it (normalised); higher = more OOD
    ood = det.predict(x)           # True = OOD, at det.threshold (data-free: from the impressions)
    det.save("fitted/"); det2 = c2ir.C2IR.load("fitted/", model)

`c2ir.detector(name, model, ...)` gives any detector of `configs/detectors/` by its config
name with the same `fit` / `score` / `predict` / `calibrate` / `save`. `fit()` resolves the
same artifact graph as `c2ir evaluate` and `c2ir score` (c2ir.graph: synthesis, statistics,
MGI weights, the fitted detector and its threshold), on a store in memory and with the
caller's model as its input, so the two cannot drift; the saved format is that of `c2ir
score`'s artifact. The caller's model is borrowed, never changed (training flags,
`requires_grad`, memory format and device stay as given).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from c2ir import saved
from c2ir.cache import MemoryStore
from c2ir.data.imageset import Normalizer
from c2ir.detectors import Detector, FitData, build_detector, detector_config, detector_names
from c2ir.detectors.base import POOLED_LAYERS, SPATIAL
from c2ir.device import resolve_device
from c2ir.distributed import DistInfo
from c2ir.errors import C2IRError, NotFittedError
from c2ir.extraction import FeatureBundle, auto_layers, bn_layers, extract_features, select_layers
from c2ir.graph import Job, Resolved, resolve
from c2ir.inputs import (check_api_numbers, check_batch, check_input_shape, check_labels, check_normalization,
                         model_input_channels, nonfinite_rows, takes_vectors, tensors_fingerprint)
from c2ir.models import head_module
from c2ir.schema import C2IRConfig, CollectStatsConfig, FeaturesConfig, MGIConfig, ScoreConfig, SynthConfig
from c2ir.stages.collect_stats import COLLECT_STATS
from c2ir.stages.features import FEATURES, ID_TRAIN
from c2ir.stages.fit import FITTED, Fitted, FitRequest, job_settings, restore
from c2ir.stages.synthesize import SYNTHESIZE, Impressions
from c2ir.stats import ClassStats
from c2ir.threshold import NotComputableError, Threshold, quantile_threshold
from c2ir.validation import check_node, check_setting

log = logging.getLogger(__name__)


def _synth_config(synth: SynthConfig | Mapping[str, Any] | None) -> SynthConfig:
    if synth is None or isinstance(synth, SynthConfig):
        return synth or SynthConfig()
    check_node("synth", dict(synth), SynthConfig)   # the CLI's validator: unknown keys, types and ranges
    return SynthConfig.from_cfg(dict(synth))


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Content digest of named tensors (the caller's model, given impressions or features): their memory-store key."""
    return tensors_fingerprint(tensors)[:16]


def _given(node_name: str, tensors: Mapping[str, torch.Tensor], value: Any) -> Resolved:
    digest = _digest(tensors)
    return Resolved(f"given-{node_name}-{digest}", f"given:{digest}", None, lambda: value)


def _loader_features(model: nn.Module, loader: Iterable[Any], layers: Sequence[str], head: nn.Linear,
                     batch_size: int, device: torch.device, with_bn: bool,
                     input_shape: Sequence[int] | None = None) -> tuple[FeatureBundle, tuple[int, ...]]:
    """(features of every batch of a DataLoader of `x` or `(x, y, ...)` (x normalised as the model takes it),
    the shape of one input); every batch is checked (c2ir.inputs) and has the shape of the first."""
    parts: list[FeatureBundle] = []
    for batch in loader:
        x, y = (batch[0], batch[1] if len(batch) > 1 else None) if isinstance(batch, (tuple, list)) else (batch, None)
        x = check_batch(x, input_shape, "a DataLoader batch", takes_vectors(model))
        input_shape = tuple(x.shape[1:])
        b = extract_features(model, x, None, layers, head, batch_size=batch_size, device=device,
                             with_bn=with_bn, desc="features")
        if y is not None:
            b["labels"] = check_labels(torch.as_tensor(y).cpu(), head.out_features)
        parts.append(b)
    if not parts:
        raise C2IRError("the DataLoader yielded no batches; pass a loader over at least one batch of images")
    if any("labels" not in p for p in parts) and any("labels" in p for p in parts):
        raise C2IRError("some batches of the DataLoader have labels and some do not")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, tuple(input_shape or ())


class OODDetector:
    """A detector of the zoo bound to a model: `fit`, then `score` / `predict` on input batches.

    Args:
        name: a config name of `configs/detectors/` (`c2ir.detector_names()`), e.g. `energy`,
            `mahalanobis` (full access: fits on a DataLoader), `mahalanobis_imp` (data-free).
        model: any classifier `nn.Module` whose last `nn.Linear` (or `head`) produces the logits.
        num_classes, input_shape, mean, std: what synthesising impressions needs (C2IR, the
            `*_imp` variants, and a data-free threshold for any detector); `mean`/`std` are the
            per-channel normalisation the model expects (also needed by ODIN and GAIA).
        layers: module-name regexes of the feature layers; None chooses them automatically
            (`c2ir.extraction.auto_layers`). Used by C2IR and `mahalanobis_multi*`.
        head: module name of the classifier layer, if not the last `nn.Linear`.
        synth: DeepInversion settings (a `SynthConfig` or a mapping of its fields); defaults are
            the CLI's `synth=default`. Use `{"flip": False}` for data that is not mirror-symmetric.
        mgi: MGI method for C2IR's layer weights: `grad_abs` (CLI default), `grad_x_act`, `uniform`.
        spatial_grid, max_spatial_per_class: spatial samples for the distribution IPMs.
        tpr: the share of ID inputs the threshold should keep: exact on calibration data; data-free, the matching
            quantile of the threshold's reference (`c2ir.threshold`: for C2IR with its logit term, a lower one).
        batch_size: forward-pass batch size. device: defaults to the model's device.
        seed: seed of the statistics' spatial samples (as the CLI's `seed`).
        store: where fitted artifacts live (a `c2ir.cache.MemoryStore`, one per detector by default);
            detectors sharing a store and a model reuse each other's impressions.
        **params: the detector's own parameters, overriding its config (e.g. `k=10`,
            `temperature=2.0`, `ipm="mmd_rbf"`); an unknown name is an error listing the valid ones.

    The defaults are those of the CLI, read from the same dataclasses (c2ir.schema).

    Fitted state, public after `fit()` (None where the detector did not need it):
        detector: the fitted feature-level detector (`c2ir.detectors.*`), `detector.params`.
        threshold, threshold_source, threshold_info: the decision threshold, the rule that set it
            (`c2ir.threshold.RULES`) and what it promises (`threshold_info.describe()`).
        impressions: `Impressions(images, targets, predicted)`, pixels in [0, 1] (inspect, plot, or
            fit another detector on them: `c2ir.detector("vim_imp", model, ...).fit(impressions=det.impressions)`).
        class_stats: per-layer, per-class statistics of the impressions' features (`c2ir.stats.ClassStats`).
        impression_features: the impressions' FeatureBundle (logits, penultimate, `layer/<name>`, ...).
        layer_weights: MGI weight of each of `layers`.
    """

    def __init__(self, name: str, model: nn.Module, *, num_classes: int | None = None,
                 input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, layers: Sequence[str] | None = None, head: str | None = None,
                 synth: SynthConfig | Mapping[str, Any] | None = None, mgi: str = MGIConfig.method,
                 spatial_grid: int = FeaturesConfig.spatial_grid,
                 max_spatial_per_class: int = CollectStatsConfig.max_spatial_per_class, tpr: float = ScoreConfig.tpr,
                 batch_size: int = C2IRConfig.batch_size, device: str | torch.device | None = None,
                 seed: int = C2IRConfig.seed, store: MemoryStore | None = None, **params: Any) -> None:
        if not isinstance(model, nn.Module):
            raise C2IRError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.mgi = check_setting("mgi", mgi, MGIConfig, "method")
        self.tpr = check_setting("tpr", tpr, ScoreConfig, "tpr")
        self.name, self.model = name, model
        self.config = {**detector_config(name), **params}
        self.detector: Detector = build_detector(name, self.config)
        self.head_name = head
        self.head = head_module(model, head)
        self.num_classes = None if num_classes is None else check_api_numbers(num_classes=num_classes)["num_classes"]
        if self.num_classes is not None and self.head.out_features != self.num_classes:
            raise C2IRError(f"num_classes={num_classes} but the model's head predicts {self.head.out_features} classes")
        self.input_shape = None if input_shape is None else check_input_shape(input_shape, model)
        if (mean is None) != (std is None):
            raise C2IRError("pass both mean and std (the model's input normalisation), or neither")
        self.mean, self.std = (None, None) if mean is None else check_normalization(
            mean, std, self.input_shape[0] if self.input_shape else model_input_channels(model))
        self.layer_patterns = None if layers is None else [str(p) for p in layers]
        self.layers = self._choose_layers(model) if layers is None else select_layers(model, self.layer_patterns)
        self.synth = _synth_config(synth)
        check_api_numbers(batch_size=batch_size, spatial_grid=spatial_grid, max_spatial_per_class=max_spatial_per_class,
                          seed=seed)
        self.spatial_grid = check_setting("spatial_grid", spatial_grid, FeaturesConfig, "spatial_grid")
        self.max_spatial_per_class = check_setting("max_spatial_per_class", max_spatial_per_class, CollectStatsConfig,
                                                   "max_spatial_per_class")
        self.batch_size = check_setting("batch_size", batch_size, C2IRConfig, "batch_size")
        self.seed = check_setting("seed", seed, C2IRConfig, "seed")
        self.device = resolve_device(str(device)) if device is not None else None
        self.store = store if store is not None else MemoryStore()
        self.threshold: float | None = None
        self.threshold_source: str | None = None     # the rule that set it (c2ir.threshold.RULES)
        self.threshold_info: Threshold | None = None
        self.layer_weights: list[float] | None = None
        self.impressions: Impressions | None = None
        self.class_stats: ClassStats | None = None
        self.impression_features: FeatureBundle | None = None

    # ----- helpers -----------------------------------------------------------------------
    def _choose_layers(self, model: nn.Module) -> list[str]:
        """`auto_layers`, required only by detectors that read layer features (a model without
        BatchNorm still works with the logit and penultimate-feature detectors)."""
        try:
            return auto_layers(model)
        except C2IRError:
            if {POOLED_LAYERS, SPATIAL} & self.detector.needs:
                raise
            return []

    @property
    def normalizer(self) -> Normalizer | None:
        return None if self.mean is None or self.std is None else Normalizer(self.mean, self.std)

    def _device(self) -> torch.device:
        return self.device or _model_device(self.model)

    def _can_synthesize(self) -> bool:
        return None not in (self.num_classes, self.input_shape, self.mean)

    def _require_synthesis_inputs(self, why: str) -> None:
        missing = [n for n in ("num_classes", "input_shape", "mean", "std") if getattr(self, n) is None]
        if missing:
            raise C2IRError(f"{self.name}: {why} needs impressions, synthesised from the model; "
                            f"pass {', '.join(missing)} (the model's classes, input shape and normalisation)")
        if not bn_layers(self.model):
            raise C2IRError(f"{self.name}: {why} needs a model with BatchNorm layers (their running statistics "
                            f"are what impressions are synthesised to match); {type(self.model).__name__} has none")

    def _job(self, synthesis: bool = False, given: dict | None = None) -> Job:
        """The graph's job for this detector: its settings as a config tree of the schema's groups."""
        shape = self.input_shape
        cfg = OmegaConf.create({
            "seed": self.seed, "batch_size": self.batch_size, "num_workers": 0, "synth": asdict(self.synth),
            "mgi": {"method": self.mgi}, "ipm": {},
            "features": {"spatial_grid": self.spatial_grid, "capture": "configured"},
            "collect_stats": {"compare_with_id": False, "max_spatial_per_class": self.max_spatial_per_class},
            "data": {"num_classes": self.num_classes, "channels": None if shape is None else shape[0],
                     "image_size": None if shape is None else list(shape[1:])},
            "model": {"head": self.head_name, "mean": self.mean, "std": self.std}, "score": {"tpr": self.tpr}})
        return Job(cfg=cfg, store=self.store, device=self._device(), dist=DistInfo(),
                   layer_names=lambda: (list(self.layers), list(self.layers)), input_shape=shape,
                   layer_patterns=self.layer_patterns, synthesis=synthesis, given=dict(given or {}))

    # ----- fit ---------------------------------------------------------------------------
    def fit(self, id_loader: Iterable[Any] | None = None, *,
            impressions: Impressions | tuple[torch.Tensor, torch.Tensor] | None = None) -> "OODDetector":
        """Fit the detector; returns self.

        Full-access detectors (`fit_on: id_train`, e.g. `mahalanobis`, `knn`, `react`) fit on
        `id_loader` (batches of `(x, y)`, x normalised). Detectors fitted on impressions synthesise
        them, or take `impressions` (e.g. another detector's `det.impressions`: no second synthesis).
        Any detector given num_classes, input_shape, mean and std (or impressions) gets its threshold
        from the impressions, without data, as `c2ir score` does; otherwise a full-access detector's
        threshold is taken in-sample on `id_loader` (call `calibrate` on held-out data for an unbiased one).
        """
        det = self.detector
        given = {("model", None): _given("model", dict(self.model.state_dict()), self.model)}
        if det.fit_on == "id_train":
            if id_loader is None:
                raise C2IRError(f"{self.name} is a full-access detector: pass fit(id_loader) with the model's ID "
                                f"training data, or use its data-free variant fitted on impressions")
            bundle, shape = _loader_features(self.model, id_loader, self.layers, self.head, self.batch_size,
                                             self._device(), "bn_means" in det.needs, self.input_shape)
            self.input_shape = self.input_shape or check_input_shape(shape, self.model)
            if "labels" not in bundle:
                raise C2IRError(f"{self.name} fits on labelled data: the DataLoader must yield (x, y) batches")
            given[(FEATURES.name, ID_TRAIN)] = _given("features", bundle, bundle)
        if impressions is not None:
            imp = impressions if isinstance(impressions, Impressions) else Impressions(*impressions)
            self.input_shape = self.input_shape or tuple(int(v) for v in imp.images.shape[1:])
            given[(SYNTHESIZE.name, None)] = _given("impressions", {"images": imp.images, "targets": imp.targets}, imp)
        synthesis = impressions is not None or det.fit_on == "impressions" or self._can_synthesize()
        if synthesis:
            self._require_synthesis_inputs(f"fitting {self.name}" if det.fit_on == "impressions"
                                           else "a data-free threshold")
        job = self._job(synthesis, given)
        try:
            fitted: Fitted = resolve(FITTED, job, FitRequest.of(self.name, self.config, {}, self.tpr)).value
        except NotComputableError as exc:
            raise C2IRError(f"{self.name} is not computable on {exc}; check its parameters ({self.detector.params}) "
                            f"and the model's normalisation (mean, std)") from None
        self.detector, self.threshold, self.threshold_source = fitted.detector, fitted.threshold, fitted.threshold_source
        self.threshold_info, self.layer_weights = fitted.threshold_info, fitted.layer_weights
        if fitted.threshold_info is not None:
            log.info("%s: %s", self.name, fitted.threshold_info.describe())
        if synthesis:
            self.impressions = resolve(SYNTHESIZE, job).value
            self.class_stats, self.impression_features = resolve(COLLECT_STATS, job).value
        return self

    def calibrate(self, id_loader: Iterable[Any], tpr: float = ScoreConfig.tpr) -> "OODDetector":
        """Set the threshold so that a share `tpr` of the ID data in `id_loader` is kept as ID."""
        self.tpr = check_setting("tpr", tpr, ScoreConfig, "tpr")
        scores = [self.score(batch[0] if isinstance(batch, (tuple, list)) else batch) for batch in id_loader]
        if not scores:
            raise C2IRError("calibrate: the DataLoader yielded no batches")
        self._set_threshold(lambda: quantile_threshold(torch.cat(scores).numpy(), self.tpr, "calibration"))
        return self

    def _set_threshold(self, rule: Callable[[], Threshold]) -> None:
        """Set the threshold by `rule()`; a reference set scored NaN/inf is one line, and no threshold is set."""
        try:
            threshold = rule()
        except NotComputableError as exc:
            raise C2IRError(f"{self.name} is not computable on {exc}; check its parameters ({self.detector.params}) "
                            f"and the model's normalisation (mean, std)") from None
        self.threshold, self.threshold_source, self.threshold_info = threshold.value, threshold.rule, threshold
        log.info("%s: %s", self.name, threshold.describe())

    # ----- score / predict ---------------------------------------------------------------
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) float64 OOD scores (higher = more OOD) of a batch `x` as the model takes it (normalised)."""
        if not self.detector._fitted:
            raise NotFittedError(f"{self.name}: call fit() before score()")
        x = check_batch(x, self.input_shape, vectors=takes_vectors(self.model))
        norm, inputs = None, x
        if self.detector.needs_input_gradients:  # it perturbs or differentiates pixels, not model inputs
            norm = self.normalizer
            if norm is None:
                raise C2IRError(f"{self.name} perturbs inputs in pixel space: pass mean and std")
            inputs = norm.to_pixels(x.float().cpu())
        scores = torch.from_numpy(self.detector.score_images(self.model, norm, inputs, self.batch_size, self._device(),
                                                             layers=self.layers, head=self.head,
                                                             spatial_grid=self.spatial_grid))
        bad = nonfinite_rows(x)
        if bad.any():  # a NaN/inf input has no meaningful score: it is never called in-distribution
            log.warning("%s: %d of %d inputs hold NaN or infinite values; scored +inf (OOD)", self.name,
                        int(bad.sum()), len(x))
            scores[bad.to(scores.device)] = float("inf")
        return scores

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool, True = OOD (score above `threshold`, or not a number: never ID; `threshold_info.describe()`
        says which rule set the threshold and the ID TPR to expect)."""
        if self.threshold is None:
            raise NotFittedError(f"{self.name} has no threshold: fit() it with num_classes, input_shape, mean and "
                                 f"std (data-free threshold), or call calibrate(id_loader)")
        return ~(self.score(x) <= self.threshold)

    __call__ = score

    # ----- save / load -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to folder `path`: tensors as safetensors, settings as JSON (no pickle);
        the format of `c2ir score`'s artifact."""
        if not self.detector._fitted:
            raise NotFittedError(f"{self.name}: call fit() before save()")
        if self.detector.requires_fit and type(self.detector).state is Detector.state:
            raise C2IRError(f"{self.name} ({type(self.detector).__name__}) does not declare its fitted state "
                            "(Detector.state / load_state), so it cannot be saved; refit it after loading the model")
        fitted = Fitted(self.detector, self.threshold, self.threshold_source, self.layer_weights, self.threshold_info)
        return saved.write(Path(path), saved.saved_config(fitted, self.name, job_settings(self._job()), self.tpr),
                           self.detector.state(), self.model)

    @classmethod
    def _from_saved(cls, name: str, model: nn.Module, settings: dict[str, Any], params: dict[str, Any]) -> "OODDetector":
        return cls(name, model, **settings, **params)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, device: str | torch.device | None = None) -> "OODDetector":
        """A detector saved by `save` (or fitted by `c2ir score`: its `score/<key>` folder), bound to `model`
        (the same architecture and weights it was fitted on)."""
        folder = Path(path)
        cfg, state = saved.read(folder, model)  # content hashes, the model's fingerprint, every field's type
        settings = dict(num_classes=cfg["num_classes"], input_shape=cfg["input_shape"], mean=cfg["mean"],
                        std=cfg["std"], layers=[re.escape(n) for n in cfg["layers"]], head=cfg["head"],
                        synth=cfg["synth"], mgi=cfg["mgi"], spatial_grid=cfg["spatial_grid"],
                        max_spatial_per_class=cfg["max_spatial_per_class"], tpr=cfg["tpr"],
                        batch_size=cfg["batch_size"], device=device, seed=cfg["seed"])
        obj = cls._from_saved(cfg["name"], model, settings, dict(cfg["params"]))
        obj.layer_patterns = cfg["layer_patterns"]
        try:
            obj.detector = restore(obj.detector, state, FitData(model=model, layers=list(obj.layers), head=obj.head))
        except (KeyError, IndexError, ValueError, RuntimeError) as exc:
            raise C2IRError(f"{folder}: the saved state does not fit a {cfg['type']} detector ({type(exc).__name__}: "
                            f"{exc}); save the detector again") from None
        obj.threshold, obj.threshold_source = cfg["threshold"], cfg["threshold_source"]
        info = cfg.get("threshold_info")   # absent in detectors saved before issue 21
        try:
            obj.threshold_info = None if info is None else Threshold.from_json(info)
        except (KeyError, IndexError, TypeError, ValueError, C2IRError):
            raise C2IRError(f"{folder}: threshold_info={info!r} is not valid; the file is damaged or was edited: "
                            "save the detector again") from None
        obj.layer_weights = cfg["layer_weights"]
        obj._probe(folder)
        return obj

    def _probe(self, folder: Path) -> None:
        """Score two blank inputs: a state whose tensors do not fit the model fails here, at load, not later."""
        if self.input_shape is None or not self.detector.state():
            return
        try:
            scores = self.score(torch.zeros(2, *self.input_shape, device=self._device()))
        except C2IRError:
            raise
        except (RuntimeError, IndexError, ValueError, KeyError) as exc:
            raise C2IRError(f"{folder}: the saved state does not fit this model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160]}); save the detector again") from None
        if not torch.isfinite(scores).all():
            raise C2IRError(f"{folder}: the saved state gives non-finite scores; it is damaged: save the detector again")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, layers={self.layers}, params={self.detector.params}, "
                f"threshold={self.threshold})")


class C2IR(OODDetector):
    """C2IR (Chen et al., ICASSP 2023) on any BatchNorm classifier, without any data:
    `c2ir.detector("c2ir", ...)` with the synthesis inputs required.

    `fit()` synthesises class-conditional impressions from the model (DeepInversion), takes
    their per-class feature statistics at `layers`, weights the layers by MGI on the
    impressions, chooses its IPM and logit weight on proxy outliers, and sets the threshold on the softened
    held-back impressions, at the quantile where a real `tpr` is estimated to sit (`c2ir.threshold`).

    Args:
        model: the classifier (any `nn.Module` with BatchNorm layers and a final `nn.Linear`).
        num_classes: number of classes the model predicts.
        input_shape: (C, H, W) of one input.
        mean, std: per-channel normalisation the model expects (inputs are `(pixels - mean) / std`).
        layers: module-name regexes, or None for the automatic choice (`c2ir.extraction.auto_layers`).
        ipm: deviation measure (`mean_standardized` default; `mahalanobis`, `mean_l2`, `mean_l1`, `mmd_rbf`,
            `wasserstein`, `sliced_wasserstein`).
        normalize, logit_score, logit_weight, select_logit_weight, select_ipm, combination, select_combination,
            criterion_reference, blurred_tolerance, reference_shift, class_weighting, ipm_seed, ipm_projections: see `c2ir.detectors.c2ir.C2IR`.
        Everything else as `OODDetector` (synth, mgi, tpr, batch_size, device, seed, store, ...).
    """

    def __init__(self, model: nn.Module, num_classes: int, input_shape: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], *, layers: Sequence[str] | None = None, **kwargs: Any) -> None:
        if not bn_layers(model):
            raise C2IRError(f"C2IR needs a model with BatchNorm layers that keep running statistics (impressions "
                            f"are synthesised to match them, and layers are chosen among BN blocks); "
                            f"{type(model).__name__} has none")
        super().__init__("c2ir", model, num_classes=num_classes, input_shape=input_shape, mean=mean, std=std,
                         layers=layers, **kwargs)

    @classmethod
    def _from_saved(cls, name: str, model: nn.Module, settings: dict[str, Any], params: dict[str, Any]) -> "C2IR":
        if name != "c2ir":
            raise C2IRError(f"the folder holds a saved {name} detector, not C2IR; load it with c2ir.load_detector")
        return cls(model, **settings, **params)


def detector(name: str, model: nn.Module, **kwargs: Any) -> OODDetector:
    """Any detector of the zoo by its config name, bound to `model` (see `OODDetector` for arguments)."""
    return OODDetector(name, model, **kwargs)


def load_detector(path: str | Path, model: nn.Module, device: str | torch.device | None = None) -> OODDetector:
    """Any detector saved by `save` (or fitted by `c2ir score`), bound to `model`."""
    return OODDetector.load(path, model, device)


__all__ = ["C2IR", "Impressions", "OODDetector", "detector", "detector_names", "load_detector"]
