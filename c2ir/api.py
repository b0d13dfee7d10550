"""The public Python API: C2IR and every detector of the zoo on any model, from user code.

    import c2ir
    det = c2ir.C2IR(model, num_classes=10, input_shape=(3, 32, 32), mean=MEAN, std=STD).fit()
    scores = det.score(x)          # x: a batch as the model takes it (normalised); higher = more OOD
    ood = det.predict(x)           # True = OOD, at det.threshold (data-free: from the impressions)
    det.save("fitted/"); det2 = c2ir.C2IR.load("fitted/", model)

`c2ir.detector(name, model, ...)` gives any detector of `configs/detectors/` by its config
name with the same `fit` / `score` / `predict` / `calibrate` / `save`. Everything here calls
the same library functions as the CLI stages (synthesis, statistics, MGI, feature
extraction, the detector classes), with the same defaults, so the two cannot drift; a test
checks that both give the same C2IR scores. The caller's model is borrowed, never changed
(training flags, `requires_grad`, memory format and device stay as given).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from c2ir import saved
from c2ir.config import config_dir
from c2ir.data.imageset import Normalizer
from c2ir.detectors import DETECTOR_TYPES, build_detector
from c2ir.device import resolve_device
from c2ir.detectors.base import (BN_MEANS, CLASS_STATS, INPUT_GRADIENTS, LAYER_WEIGHTS, POOLED_LAYERS, SPATIAL,
                                 Detector, FitData)
from c2ir.errors import C2IRError, NotFittedError
from c2ir.extraction import FeatureBundle, auto_layers, bn_layers, extract_features, select_layers
from c2ir.impressions import SynthConfig, synthesize_impressions
from c2ir.mgi import METHODS, impression_importance, normalize_weights
from c2ir.models import head_module
from c2ir.schema import SynthSchema, check_node
from c2ir.stats import compute_class_stats
from c2ir.threshold import NotComputableError, Threshold, data_free_threshold, quantile_threshold
from c2ir.validation import (check_api_numbers, check_batch, check_input_shape, check_labels, check_normalization,
                             model_input_channels, nonfinite_rows, takes_vectors)

log = logging.getLogger(__name__)

FORMAT_VERSION = saved.FORMAT_VERSION
SAVED_CONFIG, SAVED_STATE = saved.CONFIG, saved.STATE


def detector_names() -> list[str]:
    """Config names of the zoo's detectors (`configs/detectors/*.yaml`)."""
    return sorted(p.stem for p in (config_dir() / "detectors").glob("*.yaml"))


def zoo_config(name: str) -> dict[str, Any]:
    """The overrides `configs/detectors/<name>.yaml` sets (with its `type`)."""
    path = config_dir() / "detectors" / f"{name}.yaml"
    if not path.is_file():
        raise C2IRError(f"unknown detector {name!r}; choose one of: {', '.join(detector_names())}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return dict(cfg[name])  # type: ignore[index]


def _synth_config(synth: SynthConfig | Mapping[str, Any] | None) -> SynthConfig:
    if synth is None or isinstance(synth, SynthConfig):
        return synth or SynthConfig()
    valid = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(synth) - valid)
    if unknown:
        raise C2IRError(f"synth: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    check_node("synth", dict(synth), SynthSchema, closed=False)  # the CLI's types and ranges
    return SynthConfig(**dict(synth))


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _loader_features(model: nn.Module, loader: Iterable[Any], layers: Sequence[str], head: nn.Linear,
                     batch_size: int, device: torch.device, spatial_grid: int, with_bn: bool,
                     input_shape: Sequence[int] | None = None) -> tuple[FeatureBundle, tuple[int, ...]]:
    """(features of every batch of a DataLoader of `x` or `(x, y, ...)` (x normalised as the model takes it),
    the shape of one input)."""
    parts: list[FeatureBundle] = []
    for batch in loader:
        x, y = (batch[0], batch[1] if len(batch) > 1 else None) if isinstance(batch, (tuple, list)) else (batch, None)
        x = check_batch(x, input_shape, "a DataLoader batch", takes_vectors(model))
        input_shape = tuple(x.shape[1:])  # every batch has the shape of the first
        b = extract_features(model, x, None, layers, head, batch_size=batch_size, device=device,
                             spatial_grid=spatial_grid, with_bn=with_bn, desc="features")
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
        name: a config name of `configs/detectors/` (`c2ir.api.detector_names()`), e.g. `energy`,
            `mahalanobis` (full access: fits on a DataLoader), `mahalanobis_imp` (data-free).
        model: any classifier `nn.Module` whose last `nn.Linear` (or `head`) produces the logits.
        num_classes, input_shape, mean, std: what synthesising impressions needs (C2IR, the
            `*_imp` variants, and a data-free threshold for any detector); `mean`/`std` are the
            per-channel normalisation the model expects (also needed by ODIN).
        layers: module-name regexes of the feature layers; None chooses them automatically
            (`c2ir.extraction.auto_layers`). Used by C2IR and `mahalanobis_multi*`.
        head: module name of the classifier layer, if not the last `nn.Linear`.
        synth: DeepInversion settings (a `SynthConfig` or a mapping of its fields); defaults are
            the CLI's `synth=default`. Use `{"flip": False}` for data that is not mirror-symmetric.
        mgi: MGI method for C2IR's layer weights: `grad_abs` (CLI default), `grad_x_act`, `uniform`.
        spatial_grid, max_spatial_per_class: spatial samples for the distribution IPMs.
        tpr: the share of impressions (or of calibration data) that the threshold keeps as ID.
        batch_size: forward-pass batch size. device: defaults to the model's device.
        seed: seed of the statistics' spatial samples (as the CLI's `seed`).
        **params: the detector's own parameters, overriding its config (e.g. `k=10`,
            `temperature=2.0`, `ipm="mmd_rbf"`); an unknown name is an error listing the valid ones.
    """

    def __init__(self, name: str, model: nn.Module, *, num_classes: int | None = None,
                 input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, layers: Sequence[str] | None = None, head: str | None = None,
                 synth: SynthConfig | Mapping[str, Any] | None = None, mgi: str = "grad_abs",
                 spatial_grid: int = 4, max_spatial_per_class: int = 512, tpr: float = 0.95,
                 batch_size: int = 256, device: str | torch.device | None = None, seed: int = 0,
                 **params: Any) -> None:
        if not isinstance(model, nn.Module):
            raise C2IRError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if mgi not in METHODS:
            raise C2IRError(f"mgi={mgi!r}; choose one of {', '.join(METHODS)}")
        _check_tpr(tpr)
        self.name, self.model = name, model
        self.detector: Detector = build_detector(name, {**zoo_config(name), **params})
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
        self.synth, self.mgi = _synth_config(synth), mgi
        self.spatial_grid, self.max_spatial_per_class = int(spatial_grid), int(max_spatial_per_class)
        check_api_numbers(batch_size=batch_size, spatial_grid=spatial_grid,
                          max_spatial_per_class=max_spatial_per_class, seed=seed)
        self.tpr, self.batch_size, self.seed = float(tpr), int(batch_size), int(seed)
        self.device = resolve_device(str(device)) if device is not None else None
        self.threshold: float | None = None
        self.threshold_source: str | None = None     # the rule that set it (c2ir.threshold.RULES)
        self.threshold_info: Threshold | None = None
        self.layer_weights: list[float] | None = None

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
        return None if self.mean is None else Normalizer(self.mean, self.std)  # type: ignore[arg-type]

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

    def _features(self, x: torch.Tensor) -> FeatureBundle:
        needs = self.detector.needs
        layers = self.layers if (POOLED_LAYERS in needs or SPATIAL in needs) else []
        return extract_features(self.model, x, None, layers, self.head, batch_size=self.batch_size,
                                device=self._device(), spatial_grid=self.spatial_grid if SPATIAL in needs else 0,
                                with_bn=BN_MEANS in needs, desc=f"features {self.name}")

    def _impressions(self) -> tuple[torch.Tensor, FeatureBundle]:
        """Synthesise impressions (pixels) and their features (labels = targets)."""
        norm = self.normalizer
        assert norm is not None and self.num_classes is not None and self.input_shape is not None
        images, targets = synthesize_impressions(self.model, norm, self.num_classes, self.input_shape, self.synth,
                                                 self._device())
        bundle = extract_features(self.model, images, norm, self.layers, self.head, batch_size=self.batch_size,
                                  device=self._device(), spatial_grid=self.spatial_grid, desc="features impressions")
        bundle["labels"] = targets
        return images, bundle

    def _score_bundle_or_pixels(self, bundle: FeatureBundle, pixels: torch.Tensor) -> np.ndarray:
        if INPUT_GRADIENTS in self.detector.needs:
            norm = self.normalizer
            assert norm is not None
            return self.detector.score_images(self.model, norm, pixels, self.batch_size, self._device())  # type: ignore[attr-defined]
        return self.detector.score(bundle)

    # ----- fit ---------------------------------------------------------------------------
    def fit(self, id_loader: Iterable[Any] | None = None) -> "OODDetector":
        """Fit the detector; returns self.

        Full-access detectors (`fit_on: id_train`, e.g. `mahalanobis`, `knn`, `react`) fit on
        `id_loader` (batches of `(x, y)`, x normalised; the threshold is then taken in-sample on
        that data, call `calibrate` on held-out data for an unbiased one). Data-free ones ignore
        it: those fitted on impressions synthesise them, and any detector given num_classes,
        input_shape, mean and std gets its threshold from impressions without data.
        """
        det = self.detector
        if det.fit_on == "id_train":
            if id_loader is None:
                raise C2IRError(f"{self.name} is a full-access detector: pass fit(id_loader) with the model's ID "
                                f"training data, or use its data-free variant fitted on impressions")
            bundle, shape = _loader_features(self.model, id_loader, self.layers, self.head, self.batch_size,
                                             self._device(), 0, BN_MEANS in det.needs, self.input_shape)
            self.input_shape = self.input_shape or check_input_shape(shape, self.model)
            if "labels" not in bundle:
                raise C2IRError(f"{self.name} fits on labelled data: the DataLoader must yield (x, y) batches")
            det.fit(FitData(model=self.model, layers=self.layers, id_train=bundle, head=self.head))
            self._set_threshold(lambda: quantile_threshold(det.score(bundle), self.tpr, "fit_data"))
            return self
        if det.fit_on == "impressions" or self._can_synthesize():
            self._require_synthesis_inputs(f"fitting {self.name}" if det.fit_on == "impressions"
                                           else "a data-free threshold")
            images, bundle = self._impressions()
            fit_data = FitData(model=self.model, layers=self.layers, impressions=bundle, head=self.head,
                               impression_images=images, normalizer=self.normalizer)
            if CLASS_STATS in det.needs:
                fit_data.class_stats = compute_class_stats(bundle, bundle["labels"], self.layers, int(self.num_classes or 0),
                                                      self.max_spatial_per_class, self.seed)
            if LAYER_WEIGHTS in det.needs:
                importance = impression_importance(self.model, self.normalizer, images, bundle["labels"], self.layers,
                                                   self.batch_size, self._device())
                fit_data.layer_weights = normalize_weights(importance[self.mgi])
                self.layer_weights = fit_data.layer_weights.tolist()
            det.fit(fit_data)
            self._set_threshold(lambda: data_free_threshold(det, self.tpr, self._score_pixels, images,
                                                            lambda: self._score_bundle_or_pixels(bundle, images)))
            return self
        det.fit(FitData(model=self.model, layers=self.layers, head=self.head))
        return self

    def _score_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Scores of [0, 1] images (the data-free threshold's reference inputs)."""
        norm = self.normalizer
        assert norm is not None
        bundle = {} if INPUT_GRADIENTS in self.detector.needs else self._features(norm(pixels))
        return self._score_bundle_or_pixels(bundle, pixels)

    def _set_threshold(self, rule: Callable[[], Threshold]) -> None:
        """Set the threshold by `rule()`; a reference set scored NaN/inf leaves the detector without one."""
        try:
            threshold = rule()
        except NotComputableError as exc:
            raise C2IRError(f"{self.name} is not computable on {exc}; check its parameters ({self.detector.params}) "
                            f"and the model's normalisation (mean, std)") from None
        self.threshold, self.threshold_source, self.threshold_info = threshold.value, threshold.rule, threshold
        log.info("%s: %s", self.name, threshold.describe())

    def calibrate(self, id_loader: Iterable[Any], tpr: float = 0.95) -> "OODDetector":
        """Set the threshold so that a share `tpr` of the ID data in `id_loader` is kept as ID."""
        _check_tpr(tpr)
        self.tpr = float(tpr)
        scores = [self.score(batch[0] if isinstance(batch, (tuple, list)) else batch) for batch in id_loader]
        if not scores:
            raise C2IRError("calibrate: the DataLoader yielded no batches")
        self._set_threshold(lambda: quantile_threshold(torch.cat(scores).numpy(), self.tpr, "calibration"))
        return self

    # ----- score / predict ---------------------------------------------------------------
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) float64 OOD scores (higher = more OOD) of a batch `x` as the model takes it (normalised)."""
        if not self.detector._fitted:
            raise NotFittedError(f"{self.name}: call fit() before score()")
        x = check_batch(x, self.input_shape, vectors=takes_vectors(self.model))
        if INPUT_GRADIENTS in self.detector.needs:
            norm = self.normalizer
            if norm is None:
                raise C2IRError(f"{self.name} perturbs inputs in pixel space: pass mean and std")
            pixels = norm.to_pixels(x.float().cpu())
            scores = torch.from_numpy(self._score_bundle_or_pixels({}, pixels))
        else:
            scores = torch.from_numpy(self.detector.score(self._features(x)))
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
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "name": self.name, "type": type(self.detector).__name__,
                "params": self.detector.params, "layers": self.layers, "layer_patterns": self.layer_patterns,
                "head": self.head_name, "num_classes": self.num_classes,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "mean": self.mean, "std": self.std, "synth": asdict(self.synth), "mgi": self.mgi,
                "spatial_grid": self.spatial_grid, "max_spatial_per_class": self.max_spatial_per_class,
                "tpr": self.tpr, "batch_size": self.batch_size, "seed": self.seed, "threshold": self.threshold,
                "threshold_source": self.threshold_source,
                "threshold_info": None if self.threshold_info is None else self.threshold_info.to_json(),
                "layer_weights": self.layer_weights}

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to folder `path`: tensors as safetensors, settings as JSON (no pickle)."""
        if not self.detector._fitted:
            raise NotFittedError(f"{self.name}: call fit() before save()")
        if self.detector.requires_fit and type(self.detector).state is Detector.state:
            raise C2IRError(f"{self.name} ({type(self.detector).__name__}) does not declare its fitted state "
                            "(Detector.state / load_state), so it cannot be saved; refit it after loading the model")
        return saved.write(Path(path), self.config(), self.detector.state(), self.model)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, device: str | torch.device | None = None) -> "OODDetector":
        """A detector saved by `save`, bound to `model` (the same architecture and weights it was fitted on)."""
        folder = Path(path)
        cfg, state = saved.read(folder, model)  # content hashes, the model's fingerprint, every field's type
        kwargs = dict(num_classes=cfg["num_classes"], input_shape=cfg["input_shape"], mean=cfg["mean"],
                      std=cfg["std"], layers=[re.escape(n) for n in cfg["layers"]],
                      head=cfg["head"], synth=cfg["synth"], mgi=cfg["mgi"], spatial_grid=cfg["spatial_grid"],
                      max_spatial_per_class=cfg["max_spatial_per_class"], tpr=cfg["tpr"],
                      batch_size=cfg["batch_size"], device=device, seed=cfg["seed"])
        params = dict(cfg["params"])
        if cls is C2IR or cfg["name"] == "c2ir":
            obj: OODDetector = C2IR.__new__(C2IR)
            OODDetector.__init__(obj, cfg["name"], model, **kwargs, **params)
        else:
            obj = OODDetector(cfg["name"], model, **kwargs, **params)
        obj.layer_patterns = cfg["layer_patterns"]
        try:
            obj.detector.load_state(state)
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
    """C2IR (Chen et al., ICASSP 2023) on any BatchNorm classifier, without any data.

    `fit()` synthesises class-conditional impressions from the model (DeepInversion), takes
    their per-class feature statistics at `layers`, weights the layers by MGI on the
    impressions, chooses its IPM and logit weight on proxy outliers, and sets the threshold so
    that `tpr` of the softened held-back impressions count as ID (`c2ir.threshold`).

    Args:
        model: the classifier (any `nn.Module` with BatchNorm layers and a final `nn.Linear`).
        num_classes: number of classes the model predicts.
        input_shape: (C, H, W) of one input.
        mean, std: per-channel normalisation the model expects (inputs are `(pixels - mean) / std`).
        layers: module-name regexes, or None for the automatic choice (`c2ir.extraction.auto_layers`).
        ipm: deviation measure (`mean_standardized` default; `mahalanobis`, `mean_l2`, `mean_l1`, `mmd_rbf`,
            `wasserstein`, `sliced_wasserstein`).
        normalize, logit_score, logit_weight, select_logit_weight, select_ipm, class_weighting, ipm_seed,
            ipm_projections: see `c2ir.detectors.c2ir.C2IR`.
        Everything else as `OODDetector` (synth, mgi, tpr, batch_size, device, seed, ...).
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
    def load(cls, path: str | Path, model: nn.Module, device: str | torch.device | None = None) -> "C2IR":
        obj = OODDetector.load.__func__(cls, path, model, device)  # type: ignore[attr-defined]
        if not isinstance(obj, C2IR):
            raise C2IRError(f"{path} holds a saved {obj.name} detector, not C2IR; load it with c2ir.load_detector")
        return obj


def detector(name: str, model: nn.Module, **kwargs: Any) -> OODDetector:
    """Any detector of the zoo by its config name, bound to `model` (see `OODDetector` for arguments).

    `detector("c2ir", model, num_classes=..., input_shape=..., mean=..., std=...)` is `C2IR(...)`.
    """
    if name == "c2ir":
        try:
            return C2IR(model, kwargs.pop("num_classes"), kwargs.pop("input_shape"), kwargs.pop("mean"),
                        kwargs.pop("std"), **kwargs)
        except KeyError as exc:
            raise C2IRError(f"c2ir needs {exc.args[0]} (and num_classes, input_shape, mean, std)") from None
    return OODDetector(name, model, **kwargs)


def load_detector(path: str | Path, model: nn.Module, device: str | torch.device | None = None) -> OODDetector:
    """Any detector saved by `save`, bound to `model`."""
    return OODDetector.load(path, model, device)


def _check_tpr(tpr: float) -> None:
    if not 0.0 < float(tpr) < 1.0:
        raise C2IRError(f"tpr={tpr}; choose a share of ID inputs to keep, strictly between 0 and 1 (e.g. 0.95)")


__all__ = ["C2IR", "OODDetector", "detector", "load_detector", "detector_names", "DETECTOR_TYPES"]
