"""The detector contract: `fit(data)` once, then scores, higher = more OOD.

Two ways to score, both on every detector:
- `score(features)`: from a cached forward pass (a FeatureBundle), so one pass over a dataset
  serves every detector that scores features;
- `score_images(model, normalizer, images, ...)`: from pixels. The base class runs the forward
  pass this detector needs and scores the features; a detector that needs input gradients
  (ODIN, GAIA: `needs_input_gradients`) overrides it with its own gradient pass and cannot
  score cached features.

Every detector declares its parameters once, as typed keyword-only constructor
arguments with defaults, each stored on an attribute of the same name. That signature
is the single source of defaults: the YAML in `configs/detectors/` only overrides it,
`build_detector` rejects a parameter the signature does not name, and `params` reads
the values back (cache keys, reports, saved detectors). A class registers itself with
`@register_detector(type_name)` (c2ir.detectors.registry).
"""

from __future__ import annotations

import inspect
from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from c2ir.errors import C2IRError, NotFittedError
from c2ir.extraction import FeatureBundle, extract_features
from c2ir.models import head_module
from c2ir.stats import ClassStats

FIT_SOURCES = ("none", "impressions", "id_train")

# What a detector can need from the forward pass (see `Detector.needs`).
POOLED_LAYERS, SPATIAL, BN_MEANS, INPUT_GRADIENTS = "pooled_layers", "spatial", "bn_means", "input_gradients"
# ... and what it fits on besides features (`FitData.class_stats`, `FitData.layer_weights`).
CLASS_STATS, LAYER_WEIGHTS = "class_stats", "layer_weights"
# ... and the impressions' pixels (`FitData.impression_images`: C2IR's weight selection).
IMPRESSION_IMAGES = "impression_images"


@dataclass
class FitData:
    """Everything a detector may fit on; each detector takes what it needs and says what is missing."""

    model: nn.Module | None = None
    layers: list[str] = field(default_factory=list)
    impressions: FeatureBundle | None = None   # features of the impressions, `labels` = their targets
    id_train: FeatureBundle | None = None      # features of real ID training data (full access only)
    class_stats: ClassStats | None = None
    layer_weights: torch.Tensor | None = None
    head: nn.Linear | None = None
    impression_images: torch.Tensor | None = None   # pixels of the impressions (C2IR's weight selection)
    normalizer: Any = None                          # pixels -> model input, for those images
    batch_size: int = 256                           # forward passes over those images
    device: Any = "cpu"


class Detector(ABC):
    """Base class. Subclasses set `requires_fit`, declare typed keyword-only parameters, and
    implement `_fit` (optional) and `_score`."""

    type_name: ClassVar[str] = ""            # set by @register_detector: the `type:` configs select
    requires_fit: ClassVar[bool] = False
    needs_input_gradients: ClassVar[bool] = False
    # ranges of numeric parameters, e.g. {"temperature": "> 0"}; checked with finiteness by build_detector
    limits: ClassVar[dict[str, str]] = {}
    data_access: str = "data-free"   # or "full access" when fitted on real ID data

    def __init__(self, name: str, *, fit_on: str = "none") -> None:
        if fit_on not in FIT_SOURCES:
            raise C2IRError(f"detector {name}: fit_on={fit_on!r}; choose one of {', '.join(FIT_SOURCES)}")
        self.name, self.fit_on = name, fit_on
        self._fitted = not self.requires_fit
        self.data_access = "full access" if fit_on == "id_train" else "data-free"

    # ----- declared parameters -----------------------------------------------------------
    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The keyword-only constructor parameters (name -> inspect.Parameter, with default)."""
        sig = inspect.signature(cls.__init__)
        return {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {n: p.default for n, p in cls.parameters().items()}

    @property
    def params(self) -> dict[str, Any]:
        """The parameter values of this instance (fit_on included), as plain values."""
        return {n: getattr(self, n) for n in self.parameters()}

    @property
    def needs(self) -> frozenset[str]:
        """What the forward pass must record for this detector: POOLED_LAYERS (layer/<name>),
        SPATIAL (spatial/<name>), BN_MEANS (bn/<name>), INPUT_GRADIENTS (scores images, not features);
        and what its fit needs besides features: CLASS_STATS, LAYER_WEIGHTS (MGI).
        Logits and penultimate features are always there."""
        return frozenset({INPUT_GRADIENTS} if self.needs_input_gradients else ())

    @property
    def may_need(self) -> frozenset[str]:
        """What the forward pass may have to record for this detector under any value of the
        parameters a sweep varies around it (the `ipm=` group): cached passes capture it once,
        so a sweep reuses them. Defaults to `needs`."""
        return self.needs

    # ----- fit / score -------------------------------------------------------------------
    def fit(self, data: FitData) -> "Detector":
        self._fit(data)
        self._fitted = True
        return self

    def _fit(self, data: FitData) -> None:  # noqa: B027 - optional hook
        pass

    def score(self, feats: FeatureBundle) -> np.ndarray:
        """(N,) float64 scores of cached features (higher = more OOD)."""
        self._check_fitted()
        if self.needs_input_gradients:
            raise C2IRError(f"detector {self.name} needs input gradients: it scores images (score_images), "
                            "not cached features")
        return np.asarray(self._score(feats), dtype=np.float64)

    def _score(self, feats: FeatureBundle) -> np.ndarray | torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} scores images, not features")

    def score_images(self, model: nn.Module, normalizer: Any, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | str = "cpu", *, layers: list[str] | tuple[str, ...] = (),
                     head: nn.Linear | None = None, spatial_grid: int = 0) -> np.ndarray:
        """(N,) float64 scores of images: pixels (uint8, or float in [0, 1]) with `normalizer`, or model
        inputs with `normalizer=None`. Here: the forward pass this detector `needs` (`image_features`), then
        `score`. Gradient detectors override it."""
        self._check_fitted()
        return self.score(self.image_features(model, normalizer, images, batch_size, device, layers=layers,
                                              head=head, spatial_grid=spatial_grid))

    def image_features(self, model: nn.Module, normalizer: Any, images: torch.Tensor, batch_size: int = 256,
                       device: torch.device | str = "cpu", *, layers: list[str] | tuple[str, ...] = (),
                       head: nn.Linear | None = None, spatial_grid: int = 0) -> dict[str, Any]:
        """The one forward pass over images that a feature-based detector's `score` needs (its `layers`,
        spatial vectors on a `spatial_grid`, BN-input means; the logits always), for callers that also want
        the logits without a second pass."""
        needs = self.needs
        return extract_features(model, images, normalizer, list(layers) if {POOLED_LAYERS, SPATIAL} & needs else [],
                                head if head is not None else head_module(model, None), batch_size=batch_size,
                                device=device, spatial_grid=spatial_grid if SPATIAL in needs else 0,
                                with_bn=BN_MEANS in needs, desc=f"features {self.name}")

    def score_impressions(self, data: FitData) -> np.ndarray:
        """Scores of the impressions this detector was fitted with (its data-free threshold): their cached
        features, or their pixels for a detector that scores images only."""
        if self.needs_input_gradients:
            return self.score_images(data.model, data.normalizer, data.impression_images, data.batch_size,
                                     data.device, layers=data.layers, head=data.head)
        return self.score(data.impressions)

    def layer_scores(self, feats: FeatureBundle) -> torch.Tensor | None:
        """(N, L) per-layer scores behind the combined score, for the report's per-layer AUROC (columns in
        the order of `self.layers`); None for a detector that does not combine layers."""
        return None

    def fit_summary(self) -> dict | None:
        """What the fit chose and on what evidence (results.json `c2ir_fit`, report.html); None for a detector
        that chooses nothing at fit time."""
        return None

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(f"detector {self.name} is used before fit(); call fit(data) first")

    # ----- fitted state (save/load) ------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """Fitted tensors, for saving (safetensors). Detectors without fitted state return {}."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what `state()` returned; the detector counts as fitted afterwards."""
        self._fitted = True

    def source(self, data: FitData) -> FeatureBundle:
        """The feature bundle this detector fits on (`fit_on`: impressions or id_train)."""
        bundle = {"impressions": data.impressions, "id_train": data.id_train}.get(self.fit_on)
        if bundle is None:
            raise C2IRError(
                f"detector {self.name} fits on {self.fit_on} features, which are not available; "
                + ("configure the ID training split (data.train_split) or drop it from detectors=" if self.fit_on == "id_train"
                   else "run synthesize and collect-stats first")
            )
        return bundle


class AttributeState:
    """Mixin: the fitted state is the attributes named in `state_attrs` (tensors, or floats kept
    as one-element float64 tensors), so save/load needs no per-detector code."""

    state_attrs: ClassVar[tuple[str, ...]] = ()

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.state_attrs:
            value = getattr(self, name)
            out[name] = value if isinstance(value, torch.Tensor) else torch.tensor([float(value)], dtype=torch.float64)
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.state_attrs:
            value = tensors[name]
            current = getattr(type(self), "scalar_attrs", ())
            setattr(self, name, float(value[0]) if name in current else value)
        self._fitted = True
