"""DICE: directed sparsification (Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution
Detection", ECCV 2022, arXiv 2111.09805).

Contribution of weight w_cj to class c, measured on the fit set's mean activation m:
V = W (.) m (entry-wise, m broadcast over classes). Keep the weights whose contribution is above the
p-th percentile of V (all C x D entries), zero the rest, and score with Energy:
    -logsumexp((M (.) W) h + b),  M = 1[V > percentile_p(V)]      (higher = more OOD)
Paper default sparsity p = 90 (CIFAR). The original takes m from ID training data; with
`fit_on: impressions` m is the impressions' mean penultimate activation (data-free).
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.energy import energy
from c2ir.detectors.head import head_params
from c2ir.errors import C2IRError


def dice_mask(weight: torch.Tensor, mean_activation: torch.Tensor, sparsity: float = 90.0) -> torch.Tensor:
    """Boolean (C, D) mask of the weights whose contribution w_cj * m_j exceeds the p-th percentile."""
    contrib = weight.double() * mean_activation.double()[None, :]
    threshold = torch.quantile(contrib.flatten(), sparsity / 100.0)
    return contrib > threshold


@register_detector("dice")
class DICE(AttributeState, Detector):
    state_attrs = ('weight', 'bias')
    requires_fit = True

    def __init__(self, name: str = "dice_imp", *, fit_on: str = "impressions", sparsity: float = 90.0) -> None:
        super().__init__(name, fit_on=fit_on)
        if not 0.0 <= float(sparsity) < 100.0:
            raise C2IRError(f"detector {name}: sparsity={sparsity} must be in [0, 100)")
        self.sparsity = float(sparsity)

    def _fit(self, data: FitData) -> None:
        weight, self.bias = head_params(data, self.name)
        mean = self.source(data)["penultimate"].double().mean(dim=0)
        self.weight = weight.double() * dice_mask(weight, mean, self.sparsity)

    def _score(self, feats):
        return energy(torch.nn.functional.linear(feats["penultimate"].double(), self.weight, self.bias.double()))
