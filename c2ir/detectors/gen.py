"""GEN: generalized entropy score (Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based
Out-of-Distribution Detection", CVPR 2023).

    G_gamma(p) = sum_{j=1..M} p_(j)^gamma (1 - p_(j))^gamma      (higher = more OOD)

over the M largest softmax probabilities p_(1) >= ... >= p_(M). Paper defaults: gamma = 0.1,
M = 100 (ImageNet); M is capped at the number of classes, so on CIFAR-10/digits all 10 classes
count. No fit: data-free.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector
from c2ir.detectors.registry import register_detector


def generalized_entropy(logits: torch.Tensor, gamma: float = 0.1, top_m: int = 100) -> torch.Tensor:
    """sum over the top-M softmax probabilities of p^gamma (1-p)^gamma, per row."""
    p = torch.softmax(logits.double(), dim=1)
    m = min(int(top_m), p.shape[1])
    top = p.topk(m, dim=1).values
    return (top.pow(gamma) * (1.0 - top).pow(gamma)).sum(dim=1)


@register_detector("gen")
class GEN(Detector):
    limits = {"gamma": "> 0", "top_m": ">= 1"}

    def __init__(self, name: str = "gen", *, fit_on: str = "none", gamma: float = 0.1, top_m: int = 100) -> None:
        super().__init__(name, fit_on=fit_on)
        self.gamma, self.top_m = float(gamma), int(top_m)

    def _score(self, feats):
        return generalized_entropy(feats["logits"], self.gamma, self.top_m)
