"""ASH: activation shaping (Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for
Out-of-Distribution Detection", ICLR 2023, arXiv 2209.09858).

Per sample, on the penultimate (pooled) activation a in R^D: keep the k = D - round(D p / 100)
largest entries, zero the rest, then
    ASH-S: a' = prune(a) * exp(s1 / s2)     (s1 = sum a, s2 = sum prune(a))
    ASH-B: a'_i = s1 / k on the kept entries (binarised, same total as a)
and score with the Energy of the head's logits on a':  -logsumexp(W a' + b)   (higher = more OOD).
Defaults are the paper's headline settings (ResNet-50/ImageNet): ASH-S@90 and ASH-B@65. Uses
the head's weights, no statistics of any data: data-free.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.energy import energy
from c2ir.detectors.head import head_params
from c2ir.errors import C2IRError

DEFAULT_PERCENTILE = {"s": 90.0, "b": 65.0}


def _kept(n: int, percentile: float) -> int:
    return max(1, n - int(round(n * percentile / 100.0)))


def ash_s(a: torch.Tensor, percentile: float = 90.0) -> torch.Tensor:
    """Prune all but the top (100-p)% entries of each row, then scale by exp(sum before / sum after)."""
    a = a.double()
    k = _kept(a.shape[1], percentile)
    values, idx = a.topk(k, dim=1)
    pruned = torch.zeros_like(a).scatter_(1, idx, values)
    s1, s2 = a.sum(dim=1, keepdim=True), pruned.sum(dim=1, keepdim=True)
    scale = torch.where(s2 > 0, s1 / s2.clamp_min(1e-12), torch.zeros_like(s1))
    return pruned * torch.exp(scale)


def ash_b(a: torch.Tensor, percentile: float = 65.0) -> torch.Tensor:
    """Keep the positions of the top (100-p)% entries of each row, each set to (row sum) / k."""
    a = a.double()
    k = _kept(a.shape[1], percentile)
    idx = a.topk(k, dim=1).indices
    fill = (a.sum(dim=1, keepdim=True) / k).expand(-1, k)
    return torch.zeros_like(a).scatter_(1, idx, fill)


@register_detector("ash")
class ASH(AttributeState, Detector):
    state_attrs = ('weight', 'bias')
    requires_fit = True  # reads the head's weights; fits on no data

    def __init__(self, name: str = "ash_s", *, fit_on: str = "none", variant: str = "s",
                 percentile: float | None = None) -> None:
        super().__init__(name, fit_on=fit_on)
        if variant not in DEFAULT_PERCENTILE:
            raise C2IRError(f"detector {name}: variant={variant!r} is not an ASH variant; choose s or b")
        self.variant = variant
        self.percentile = DEFAULT_PERCENTILE[variant] if percentile is None else float(percentile)
        if not 0.0 <= self.percentile < 100.0:
            raise C2IRError(f"detector {name}: percentile={self.percentile} must be in [0, 100)")

    def _fit(self, data: FitData) -> None:
        self.weight, self.bias = head_params(data, self.name)

    def _score(self, feats):
        shape = ash_s if self.variant == "s" else ash_b
        a = shape(feats["penultimate"], self.percentile)
        return energy(torch.nn.functional.linear(a, self.weight.double(), self.bias.double()))
