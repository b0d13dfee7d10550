"""Predictive entropy of the softmax posterior, the classical uncertainty baseline
(Shannon entropy as an OOD score; e.g. Hendrycks et al., ICLR 2019, arXiv 1812.04606, and OpenOOD).

    H(x) = -sum_c p_c log p_c,  p = softmax(f(x))      (higher = more OOD)

No hyper-parameters, no fit: data-free.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector
from c2ir.detectors.registry import register_detector


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits), per row; 0 for a one-hot posterior, log C for a flat one."""
    logp = torch.log_softmax(logits.double(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


@register_detector("entropy")
class Entropy(Detector):
    def __init__(self, name: str = "entropy", *, fit_on: str = "none") -> None:
        super().__init__(name, fit_on=fit_on)

    def _score(self, feats):
        return entropy(feats["logits"])
