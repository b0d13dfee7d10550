"""Mahalanobis distance (Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018, arXiv 1807.03888).

Class means mu_c and one covariance Sigma shared by all classes (a "tied" Gaussian discriminant),
estimated from the penultimate features as in the paper's Eq. 1; score (the paper's Eq. 2, negated)

    M(x) = min_c (h - mu_c)^T Sigma^+ (h - mu_c)        (higher = more OOD)

`covariance` (how Sigma is estimated from the class-centred fit features):
- `empirical` (default, the paper's form and its code's `sklearn.covariance.EmpiricalCovariance`):
  Sigma = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T. Its inverse is the pseudo-inverse
  (`torch.linalg.pinv(hermitian=True)`, what `EmpiricalCovariance.precision_` holds): with fewer
  centred samples than feature dimensions (e.g. 100 impressions of 10 classes and 512 features)
  Sigma is singular, and the distance is then measured only inside the span of the fit data
  (directions the fit set never varies in add nothing); a warning names the rank. No ridge is added.
- `ledoit_wolf`: Ledoit-Wolf shrinkage towards a scaled identity (sklearn `LedoitWolf`), always
  invertible; not the paper's form (on 100 impressions its shrinkage intensity is large).

`multi_layer=true` averages per-layer scores over every selected layer (each standardised by its
own score distribution on the fit set; no OOD-tuned regression, unlike the paper's feature
ensemble). Full access when fitted on ID training data; `fit_on=impressions` is the data-free variant.
"""

from __future__ import annotations

import logging

import torch

from c2ir.detectors.base import POOLED_LAYERS, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.errors import C2IRError
from c2ir.extraction import batches
from c2ir.stats import shrunk_precision

log = logging.getLogger(__name__)

COVARIANCES = ("empirical", "ledoit_wolf")


def tied_precision(centered: torch.Tensor, covariance: str = "empirical") -> torch.Tensor:
    """(D, D) float64 inverse of the shared covariance of class-centred rows (pure): the pseudo-inverse
    of the empirical covariance (1/N) X^T X, or the inverse of its Ledoit-Wolf shrinkage."""
    x = centered.double()
    if covariance == "ledoit_wolf":
        return shrunk_precision(x)
    if covariance != "empirical":
        raise C2IRError(f"covariance={covariance!r}; choose one of {', '.join(COVARIANCES)}")
    return torch.linalg.pinv(x.T @ x / len(x), hermitian=True)


def fit_gaussian(x: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 covariance: str = "empirical") -> tuple[torch.Tensor, torch.Tensor]:
    """(class means (K, D), tied precision (D, D)) of one feature space, float64."""
    x = x.double()
    means = torch.stack([x[labels == c].mean(0) if (labels == c).any() else x.mean(0) for c in range(num_classes)])
    centered = x - means[labels]
    if covariance == "empirical":
        rank = int(torch.linalg.matrix_rank(centered))
        if rank < x.shape[1]:
            log.warning("Mahalanobis: the shared covariance of %d fit samples has rank %d < %d features; "
                        "using its pseudo-inverse (distances only within the fit data's span)",
                        len(x), rank, x.shape[1])
    return means, tied_precision(centered, covariance)


def min_distance(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance of each row of x to its closest class mean (pure)."""
    x = x.double()
    out = []
    for span in batches(len(x), 2048):
        diff = x[span, None, :] - means[None]          # (B, K, D)
        out.append(torch.einsum("bkd,de,bke->bk", diff, precision, diff).min(dim=1).values)
    return torch.cat(out)


@register_detector("mahalanobis")
class Mahalanobis(Detector):
    """Distance to the closest class mean under a tied covariance.

    Args:
        fit_on: `id_train` (full access, the paper's setting) or `impressions` (data-free).
        multi_layer: also use every selected layer's pooled features (mean of standardised scores).
        covariance: `empirical` (the paper's; pseudo-inverse when singular) or `ledoit_wolf`.
    """

    requires_fit = True

    def __init__(self, name: str = "mahalanobis", *, fit_on: str = "id_train", multi_layer: bool = False,
                 covariance: str = "empirical") -> None:
        super().__init__(name, fit_on=fit_on)
        if covariance not in COVARIANCES:
            raise C2IRError(f"detector {name}: covariance={covariance!r}; choose one of {', '.join(COVARIANCES)}")
        self.multi_layer, self.covariance = bool(multi_layer), str(covariance)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({POOLED_LAYERS}) if self.multi_layer else frozenset()

    def _fit(self, data: FitData) -> None:
        src = self.source(data)
        labels = src["labels"].long()
        k = int(src["logits"].shape[1])
        self.keys = ([k for k in src if k.startswith("layer/")] if self.multi_layer else []) + ["penultimate"]
        self.models = {key: fit_gaussian(src[key], labels, k, self.covariance) for key in self.keys}
        self.scale = {}
        for key, (means, precision) in self.models.items():
            d = min_distance(src[key], means, precision)
            spread = d.std() if len(d) > 1 else d.new_zeros(())   # one fit sample: no spread (and no torch warning)
            self.scale[key] = (d.mean(), spread.clamp(min=1e-12))

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
