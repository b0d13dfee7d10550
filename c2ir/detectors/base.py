"""The detector contract: `fit(ctx)` once, then `score(features) -> np.ndarray`, higher = more OOD.

Scores are computed from cached forward outputs (a FeatureBundle), so one forward pass
over a dataset serves every detector; the exception is a detector that needs input
gradients (ODIN), which sets `needs_input_gradients` and implements `score_images`
(evaluate fits it first and caches its scores per set, keyed by its config).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from c2ir.errors import C2IRError, NotFittedError
from c2ir.features import FeatureBundle
from c2ir.stats import ClassStats


@dataclass
class FitContext:
    """Everything a detector may fit on; each detector takes what it needs and says what is missing."""

    model: nn.Module | None = None
    layers: list[str] = field(default_factory=list)
    impressions: FeatureBundle | None = None   # features of the impressions, `labels` = their targets
    id_train: FeatureBundle | None = None      # features of real ID training data (full access only)
    class_stats: ClassStats | None = None
    layer_weights: torch.Tensor | None = None
    head: nn.Linear | None = None
    ipm: dict[str, Any] = field(default_factory=dict)


class Detector(ABC):
    """Base class. Subclasses set `requires_fit` and implement `_fit` (optional) and `_score`."""

    requires_fit: ClassVar[bool] = False
    needs_input_gradients: ClassVar[bool] = False
    data_access: ClassVar[str] = "data-free"   # or "full access" when fitted on real ID data

    def __init__(self, name: str, fit_on: str = "none", **params: Any):
        self.name, self.fit_on, self.params = name, fit_on, params
        self._fitted = not self.requires_fit
        if fit_on == "id_train":
            self.data_access = "full access"

    def fit(self, ctx: FitContext) -> "Detector":
        self._fit(ctx)
        self._fitted = True
        return self

    def _fit(self, ctx: FitContext) -> None:  # noqa: B027 - optional hook
        pass

    def score(self, feats: FeatureBundle) -> np.ndarray:
        if not self._fitted:
            raise NotFittedError(f"detector {self.name} is used before fit(); call fit(ctx) first")
        return np.asarray(self._score(feats), dtype=np.float64)

    @abstractmethod
    def _score(self, feats: FeatureBundle) -> np.ndarray | torch.Tensor: ...

    def source(self, ctx: FitContext) -> FeatureBundle:
        """The feature bundle this detector fits on (`fit_on`: impressions or id_train)."""
        bundle = {"impressions": ctx.impressions, "id_train": ctx.id_train}.get(self.fit_on)
        if bundle is None:
            raise C2IRError(
                f"detector {self.name} fits on {self.fit_on} features, which are not available; "
                + ("configure the ID training split (data.train_split) or drop it from detectors=" if self.fit_on == "id_train"
                   else "run synthesize and collect-stats first")
            )
        return bundle
