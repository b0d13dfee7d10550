"""ASH: activation shaping (Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for
Out-of-Distribution Detection", ICLR 2023, arXiv 2209.09858).

Per sample, on the penultimate (pooled) activation a in R^D: keep the k = D - round(D p / 100)
largest entries, zero the rest, then
    ASH-S: a' = prune(a) * exp(s1 / s2)     (s1 = sum a, s2 = sum prune(a))
    ASH-B: a'_i = s1 / k on the kept entries (binarised, same total as a)
and score with the Energy of the head's logits on a':  -logsumexp(W a' + b)   (higher = more OOD).

Percentile p. The paper sets it per benchmark: ImageNet (ResNet-50, Section 4.1 and Table 1)
ASH-S@90, ASH-B@65; CIFAR-10 (DenseNet-101, Table 2) ASH-S@95, ASH-B@95; CIFAR-100 (Table 2)
ASH-S@90, ASH-B@85. (The CIFAR values are Table 2 as read by this project's authors; the paper's PDF
could not be re-opened offline when they were entered. The authors' released configs,
config/cifar10_config.yml and config/cifar100_config.yml of github.com/andrijazz/ash, run ASH-S@90 on
both CIFAR sets: pass `percentile=90` for that setting.) A detector's default cannot know the data set, so `percentile: auto` (the
default) takes the setting of the paper's benchmark with the model's number of classes K, read from
the head at fit time: K <= 10 the CIFAR-10 setting, K <= 100 the CIFAR-100 setting, larger heads the
ImageNet setting. The class count, not the feature width, is what separates those benchmarks
(ResNet-18 has 512 penultimate units on CIFAR and on ImageNet alike). A number overrides it.
Uses the head's weights, no statistics of any data: data-free.
"""

from __future__ import annotations

import logging

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.energy import energy
from c2ir.detectors.head import head_params
from c2ir.errors import C2IRError

log = logging.getLogger(__name__)

# the paper's settings per benchmark, {variant: percentile}
CIFAR10_PERCENTILE = {"s": 95.0, "b": 95.0}      # Table 2, DenseNet-101
CIFAR100_PERCENTILE = {"s": 90.0, "b": 85.0}     # Table 2, DenseNet-101
IMAGENET_PERCENTILE = {"s": 90.0, "b": 65.0}     # Table 1, ResNet-50


def paper_percentile(variant: str, num_classes: int) -> float:
    """The paper's percentile for its benchmark with `num_classes` classes (`percentile: auto`)."""
    setting = (CIFAR10_PERCENTILE if num_classes <= 10 else CIFAR100_PERCENTILE if num_classes <= 100
               else IMAGENET_PERCENTILE)
    return setting[variant]


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
    requires_fit = True  # reads the head's weights; fits on no data

    state_attrs = ('weight', 'bias', 'effective_percentile')
    scalar_attrs = ('effective_percentile',)

    def __init__(self, name: str = "ash_s", *, fit_on: str = "none", variant: str = "s",
                 percentile: float | str = "auto") -> None:
        super().__init__(name, fit_on=fit_on)
        if variant not in ("s", "b"):
            raise C2IRError(f"detector {name}: variant={variant!r} is not an ASH variant; choose s or b")
        self.variant = variant
        if percentile != "auto":
            try:
                percentile = float(percentile)
            except (TypeError, ValueError):
                raise C2IRError(f"detector {name}: percentile={percentile!r}; use auto or a number in [0, 100)") from None
            if not 0.0 <= percentile < 100.0:
                raise C2IRError(f"detector {name}: percentile={percentile} must be in [0, 100)")
        self.percentile = percentile

    def _fit(self, data: FitData) -> None:
        self.weight, self.bias = head_params(data, self.name)
        if self.percentile == "auto":
            self.effective_percentile = paper_percentile(self.variant, self.weight.shape[0])
            log.info("%s: percentile auto -> %g (the paper's setting for %d classes)", self.name,
                     self.effective_percentile, self.weight.shape[0])
        else:
            self.effective_percentile = float(self.percentile)

    def _score(self, feats):
        shape = ash_s if self.variant == "s" else ash_b
        a = shape(feats["penultimate"], self.effective_percentile)
        return energy(torch.nn.functional.linear(a, self.weight.double(), self.bias.double()))
