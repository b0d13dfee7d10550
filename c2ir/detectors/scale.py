"""SCALE (Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution
Detection Enhancement", ICLR 2024, arXiv 2310.00227).

Like ASH-S but without pruning: the whole penultimate activation a is scaled,
    a' = a * exp(s1 / s2),  s1 = sum a,  s2 = sum of the top (100-p)% entries of a,
and scored with Energy, -logsumexp(W a' + b) (higher = more OOD). The scale factor grows with how
evenly the activation is spread, which is larger for OOD inputs; not pruning keeps ID accuracy.
p = 85 (default). The authors' released configuration (github.com/kai422/SCALE,
`configs/postprocessors/scale.yml`: percentile 85, automatic parameter search off) is a single
setting, used for the OpenOOD v1.5 CIFAR-10, CIFAR-100 and ImageNet runs in that repository's
`results/`, so 85 is the CIFAR setting as well. Uses only the head's weights: data-free.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.energy import energy
from c2ir.detectors.head import head_params
from c2ir.errors import C2IRError


def scale_shape(a: torch.Tensor, percentile: float = 85.0) -> torch.Tensor:
    """a * exp(sum(a) / sum(top-k of a)), k = D - round(D p / 100), per row."""
    a = a.double()
    k = max(1, a.shape[1] - int(round(a.shape[1] * percentile / 100.0)))
    s1, s2 = a.sum(dim=1, keepdim=True), a.topk(k, dim=1).values.sum(dim=1, keepdim=True)
    r = torch.where(s2 > 0, s1 / s2.clamp_min(1e-12), torch.zeros_like(s1))
    return a * torch.exp(r)


@register_detector("scale")
class SCALE(AttributeState, Detector):
    state_attrs = ('weight', 'bias')
    requires_fit = True  # reads the head's weights; fits on no data

    def __init__(self, name: str = "scale", *, fit_on: str = "none", percentile: float = 85.0) -> None:
        super().__init__(name, fit_on=fit_on)
        if not 0.0 <= float(percentile) < 100.0:
            raise C2IRError(f"detector {name}: percentile={percentile} must be in [0, 100)")
        self.percentile = float(percentile)

    def _fit(self, data: FitData) -> None:
        self.weight, self.bias = head_params(data, self.name)

    def _score(self, feats):
        a = scale_shape(feats["penultimate"], self.percentile)
        return energy(torch.nn.functional.linear(a, self.weight.double(), self.bias.double()))
