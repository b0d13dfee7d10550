"""Any c2ir detector as a pytorch-ood detector (pytorch-ood, Kirchheim et al., CVPR-W 2022;
`pip install -e ".[pytorch-ood]"`).

    from c2ir.integrations.pytorch_ood import C2IRDetector
    from pytorch_ood.metrics import OODMetrics
    det = C2IRDetector("c2ir", model, num_classes=10, input_shape=(3, 32, 32), mean=MEAN, std=STD).fit(train_loader)
    metrics = OODMetrics(); [metrics.update(det(x), y) for x, y in test_loader]; metrics.compute()

pytorch-ood's conventions hold: `predict(x)` returns outlier scores (higher = more OOD, c2ir's own
convention too) for a batch as the model takes it, and loaders yield `(x, y)` with y < 0 marking OOD
rows, which `fit` ignores. `fit(loader)` goes through the public API (`c2ir.detector(...).fit`):
full-access detectors fit on the loader's ID rows; data-free ones synthesise impressions and ignore
it. `fit_features(z, y)` / `predict_features(z)` work on penultimate features (pytorch-ood's
`FeaturesDetector` interface) for the detectors that read only the penultimate features and the
head's logits, with their full-access semantics (fitted on the given ID features).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

import c2ir
from c2ir.errors import C2IRError

try:
    from pytorch_ood import api as _pod_api
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise C2IRError("c2ir.integrations.pytorch_ood needs pytorch-ood: pip install pytorch-ood "
                    "(or pip install -e \".[pytorch-ood]\" from a checkout)") from exc

_Base: Any = getattr(_pod_api, "FeaturesDetector", _pod_api.Detector)
_NOT_FITTED = getattr(_pod_api, "RequiresFittingException", RuntimeError)

# what the feature path can give a detector: the penultimate features and the head's logits
_FEATURE_PATH_NEEDS = frozenset()


class _KnownRows:
    """A loader's (x, y) batches without its OOD rows (y < 0), read lazily (data-free detectors never read it)."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            x, y = batch[0], torch.as_tensor(batch[1])
            keep = y >= 0
            if keep.any():
                yield x[keep.to(x.device)], y[keep]


def _api_arguments() -> frozenset[str]:
    """Keyword arguments of `c2ir.detector` that are not detector parameters (num_classes, synth, ...)."""
    return frozenset(n for n, p in inspect.signature(c2ir.OODDetector.__init__).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY)


class C2IRDetector(_Base):
    """A c2ir detector (any config name of `c2ir.detector_names()`) behind pytorch-ood's interface.

    Args:
        name: the c2ir detector, e.g. `c2ir`, `energy`, `knn` (full access), `nac_imp` (data-free).
        model: the classifier; its last `nn.Linear` (or `head=`) gives the logits.
        **kwargs: as `c2ir.detector` (num_classes, input_shape, mean, std for impressions; the
            detector's own parameters).
    """

    def __init__(self, name: str, model: nn.Module, **kwargs: Any) -> None:
        self.model = model
        self.name = name
        self.detector = c2ir.detector(name, model, **kwargs)
        self._kwargs = kwargs
        self._features: Any = None
        self._fitted = False

    # ----- inputs -------------------------------------------------------------------------
    def fit(self, data_loader: Iterable[Any] | None = None, device: Any = None) -> "C2IRDetector":
        """Fit on a loader of `(x, y)` (ID rows only are used; ignored by data-free detectors)."""
        self.detector.fit(None if data_loader is None else _KnownRows(data_loader))
        self._fitted = True
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) outlier scores of a batch as the model takes it (higher = more OOD)."""
        if not self._fitted:
            raise _NOT_FITTED(f"{self.name}: call fit(loader) before predict(x)")
        return self.detector.score(x).to(x.device)

    # ----- penultimate features -----------------------------------------------------------
    def fit_features(self, x: torch.Tensor, y: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> "C2IRDetector":
        """Fit on penultimate features `x` (N, D) with labels `y` (rows with y < 0 are dropped)."""
        from c2ir.detectors import FitData, build_detector, detector_config
        from c2ir.models import head_module

        params = {k: v for k, v in self._kwargs.items() if k not in _api_arguments()}
        det = build_detector(self.name, {**detector_config(self.name), **params})
        unsupported = set(det.needs) - _FEATURE_PATH_NEEDS
        if unsupported or det.fit_on == "impressions" or self.name == "c2ir":
            raise C2IRError(f"{self.name} reads more than the penultimate features and logits "
                            f"({', '.join(sorted(unsupported)) or 'impressions synthesised from the model'}); "
                            "use fit(loader) and predict(x)")
        head = head_module(self.model, self._kwargs.get("head"))
        x = torch.as_tensor(x).detach().float().cpu()
        bundle = {"penultimate": x, "logits": self._logits(head, x)}
        if y is not None:
            y = torch.as_tensor(y).long().cpu()
            keep = y >= 0
            bundle = {k: v[keep] for k, v in bundle.items()}
            bundle["labels"] = y[keep]
        try:
            det.fit(FitData(model=self.model, id_train=bundle, head=head))
        except KeyError as exc:  # a class-conditional detector reading the labels it was not given
            if y is None and exc.args == ("labels",):
                raise C2IRError(f"{self.name} fits per class: pass the labels, fit_features(x, y)") from None
            raise
        self._features = (det, head)
        return self

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) outlier scores of penultimate features `x` (N, D), after `fit_features`."""
        if self._features is None:
            raise _NOT_FITTED(f"{self.name}: call fit_features(z, y) before predict_features(z)")
        det, head = self._features
        z = torch.as_tensor(x).detach().float()
        scores = det.score({"penultimate": z.cpu(), "logits": self._logits(head, z.cpu())})
        return torch.from_numpy(scores).to(z.device)

    @staticmethod
    def _logits(head: nn.Linear, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            weight = head.weight.detach().cpu().float()
            bias = None if head.bias is None else head.bias.detach().cpu().float()
            return torch.nn.functional.linear(z, weight, bias)


__all__ = ["C2IRDetector"]
