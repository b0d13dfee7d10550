"""Energy score (Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020)."""

import torch

from c2ir.detectors.base import Detector


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """E(x) = -T logsumexp(f(x) / T); higher energy = more OOD."""
    return -temperature * torch.logsumexp(logits.double() / temperature, dim=1)


class Energy(Detector):
    def _score(self, feats):
        return energy(feats["logits"], float(self.params.get("temperature", 1.0)))
