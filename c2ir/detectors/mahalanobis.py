"""Mahalanobis distance (Lee et al., NeurIPS 2018): class means and a tied covariance of
penultimate features; score = distance to the closest class mean. `multi_layer=true`
averages per-layer scores over every selected layer (each standardised by its own score
distribution on the fit set; no OOD-tuned regression). Full access when fitted on ID
training data; `fit_on=impressions` is the data-free variant."""

from __future__ import annotations

import torch

from c2ir.detectors.base import POOLED_LAYERS, Detector, FitData
from c2ir.extraction import batches
from c2ir.stats import shrunk_precision


def fit_gaussian(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class means (K, D), Ledoit-Wolf-shrunk tied precision (D, D)) of one feature space, float64."""
    x = x.double()
    means = torch.stack([x[labels == c].mean(0) if (labels == c).any() else x.mean(0) for c in range(num_classes)])
    return means, shrunk_precision(x - means[labels])


def min_distance(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance of each row of x to its closest class mean (pure)."""
    x = x.double()
    out = []
    for span in batches(len(x), 2048):
        diff = x[span, None, :] - means[None]          # (B, K, D)
        out.append(torch.einsum("bkd,de,bke->bk", diff, precision, diff).min(dim=1).values)
    return torch.cat(out)


class Mahalanobis(Detector):
    """Distance to the closest class mean under a tied covariance.

    Args:
        fit_on: `id_train` (full access, the paper's setting) or `impressions` (data-free).
        multi_layer: also use every selected layer's pooled features (mean of standardised scores).
    """

    requires_fit = True

    def __init__(self, name: str = "mahalanobis", *, fit_on: str = "id_train", multi_layer: bool = False) -> None:
        super().__init__(name, fit_on=fit_on)
        self.multi_layer = bool(multi_layer)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({POOLED_LAYERS}) if self.multi_layer else frozenset()

    def _fit(self, data: FitData) -> None:
        src = self.source(data)
        labels = src["labels"].long()
        k = int(src["logits"].shape[1])
        self.keys = ([k for k in src if k.startswith("layer/")] if self.multi_layer else []) + ["penultimate"]
        self.models = {key: fit_gaussian(src[key], labels, k) for key in self.keys}
        self.scale = {}
        for key, (means, precision) in self.models.items():
            d = min_distance(src[key], means, precision)
            self.scale[key] = (d.mean(), d.std().clamp(min=1e-12))

    def _score(self, feats):
        if len(self.keys) == 1:
            return min_distance(feats[self.keys[0]], *self.models[self.keys[0]])
        z = [(min_distance(feats[k], *self.models[k]) - m) / s for k, (m, s) in self.scale.items()]
        return torch.stack(z, dim=1).mean(dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (key, (means, precision)) in enumerate(self.models.items()):  # index keeps the fitted order
            loc, spread = self.scale[key]
            out[f"{i:03d}/means/{key}"], out[f"{i:03d}/precision/{key}"] = means, precision
            out[f"{i:03d}/loc/{key}"], out[f"{i:03d}/spread/{key}"] = loc.reshape(1), spread.reshape(1)
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        found = sorted(k.split("/", 2) for k in tensors if k.split("/", 2)[1] == "means")
        self.keys = [key for _, _, key in found]
        self.models = {k: (tensors[f"{i}/means/{k}"], tensors[f"{i}/precision/{k}"]) for i, _, k in found}
        self.scale = {k: (tensors[f"{i}/loc/{k}"][0], tensors[f"{i}/spread/{k}"][0]) for i, _, k in found}
        super().load_state(tensors)
