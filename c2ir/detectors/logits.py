"""Scores from logits alone, shared by the logit detectors and C2IR's optional logit term.

Each is a pure function (N, K) logits -> (N,) float64, higher = more OOD:
- `msp`: negative maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)
- `maxlogit`: negative maximum logit (Hendrycks et al., ICML 2022)
- `energy`: E(x) = -T logsumexp(f(x) / T) (Liu et al., NeurIPS 2020)
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def msp(logits: torch.Tensor) -> torch.Tensor:
    return -torch.softmax(logits.double(), dim=1).max(dim=1).values


def maxlogit(logits: torch.Tensor) -> torch.Tensor:
    return -logits.double().max(dim=1).values


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """E(x) = -T logsumexp(f(x) / T); higher energy = more OOD."""
    return -temperature * torch.logsumexp(logits.double() / temperature, dim=1)


LOGIT_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "energy": energy, "msp": msp, "maxlogit": maxlogit,
}
