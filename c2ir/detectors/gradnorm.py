"""GradNorm (Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts
in the Wild", NeurIPS 2021, arXiv 2110.00218).

    S(x) = || d KL(u || softmax(f(x)/T)) / d W ||_1       (W: the final linear layer's weight;
                                                            higher S = more ID, so the score is -S)

For a linear head z = W h + b the gradient is the outer product ((p - u) / T) h^T with
p = softmax(z/T) and u the uniform distribution, so its entry-wise L1 norm factorises exactly:

    S(x) = (1/T) ||p - u||_1 * ||h||_1

which is what the paper's code computes with one backward pass per image; here it comes from
the cached logits and penultimate features, with no extra pass (the unit test checks it
against autograd on the weight gradient). Paper default: T = 1. No fit: data-free.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector
from c2ir.detectors.registry import register_detector


def gradnorm(penultimate: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """L1 norm of the gradient of KL(uniform || softmax(logits/T)) w.r.t. the head weight, per row."""
    p = torch.softmax(logits.double() / temperature, dim=1)
    u = 1.0 / p.shape[1]
    return (p - u).abs().sum(dim=1) / temperature * penultimate.double().abs().sum(dim=1)


@register_detector("gradnorm")
class GradNorm(Detector):
    limits = {"temperature": "> 0"}

    def __init__(self, name: str = "gradnorm", *, fit_on: str = "none", temperature: float = 1.0) -> None:
        super().__init__(name, fit_on=fit_on)
        self.temperature = float(temperature)

    def _score(self, feats):
        return -gradnorm(feats["penultimate"], feats["logits"], self.temperature)
