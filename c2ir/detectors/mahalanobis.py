"""Mahalanobis distance (Lee et al., NeurIPS 2018): class means and a tied covariance of
penultimate features; score = distance to the closest class mean. `multi_layer=true`
averages per-layer scores over every selected layer (each standardised by its own score
distribution on the fit set; no OOD-tuned regression). Full access when fitted on ID
training data; `fit_on=impressions` is the data-free variant."""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector, FitContext


class _Gaussian:
    """Class means + Ledoit-Wolf-shrunk tied covariance of one feature space."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, num_classes: int):
        from sklearn.covariance import LedoitWolf

        x = x.double()
        self.means = torch.stack([
            x[labels == c].mean(0) if (labels == c).any() else x.mean(0) for c in range(num_classes)
        ])
        centered = (x - self.means[labels]).numpy()
        precision = LedoitWolf(assume_centered=True).fit(centered).precision_
        self.precision = torch.from_numpy(precision)

    def min_distance(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        out = []
        for start in range(0, len(x), 2048):
            diff = x[start:start + 2048, None, :] - self.means[None]          # (B, K, D)
            d = torch.einsum("bkd,de,bke->bk", diff, self.precision, diff)
            out.append(d.min(dim=1).values)
        return torch.cat(out)


class Mahalanobis(Detector):
    requires_fit = True

    def _keys(self, bundle) -> list[str]:
        if not self.params.get("multi_layer", False):
            return ["penultimate"]
        return [k for k in bundle if k.startswith("layer/")] + ["penultimate"]

    def _fit(self, ctx: FitContext) -> None:
        src = self.source(ctx)
        labels = src["labels"].long()
        k = int(src["logits"].shape[1])
        self.keys = self._keys(src)
        self.models = {key: _Gaussian(src[key], labels, k) for key in self.keys}
        self.scale = {}
        for key, g in self.models.items():
            d = g.min_distance(src[key])
            self.scale[key] = (d.mean(), d.std().clamp(min=1e-12))

    def _score(self, feats):
        if len(self.keys) == 1:
            return self.models[self.keys[0]].min_distance(feats[self.keys[0]])
        z = [(self.models[k].min_distance(feats[k]) - m) / s for k, (m, s) in self.scale.items()]
        return torch.stack(z, dim=1).mean(dim=1)
