"""Measuring Gradient-based Importance (MGI): layer weights from impressions only.

With L = CE(f(x), target) on each impression, a layer whose activations A_l carry
larger loss gradients matters more to the class decision:
- `grad_abs`:   mean over impressions and elements of |dL/dA_l|
- `grad_x_act`: mean of |A_l * dL/dA_l| (first-order contribution of the layer's activations)
- `uniform`:    equal weights
Weights are non-negative and sum to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from c2ir.data.imageset import Normalizer
from c2ir.errors import C2IRError
from c2ir.extraction import ForwardHooks, gradient_batches

METHODS = ("grad_abs", "grad_x_act", "uniform")


def layer_importance(acts: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-layer importance under every method, from activations and their loss gradients (pure)."""
    grad_abs = torch.stack([g.abs().float().mean() for g in grads])
    grad_x_act = torch.stack([(a * g).abs().float().mean() for a, g in zip(acts, grads)])
    return {"grad_abs": grad_abs, "grad_x_act": grad_x_act, "uniform": torch.ones(len(acts))}


def normalize_weights(importance: torch.Tensor) -> torch.Tensor:
    """Non-negative weights summing to 1 (uniform if every importance is zero)."""
    imp = importance.double().clamp(min=0)
    total = imp.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(importance, 1.0 / len(importance), dtype=torch.float32)
    return (imp / total).float()


def mgi_weights(acts: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], method: str) -> torch.Tensor:
    if method not in METHODS:
        raise C2IRError(f"unknown mgi method {method!r}; choose one of {list(METHODS)}")
    return normalize_weights(layer_importance(acts, grads)[method])


def impression_importance(model: nn.Module, normalizer: Normalizer | None, images: torch.Tensor, targets: torch.Tensor,
                          layers: Sequence[str], batch_size: int = 256,
                          device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Importance of each layer under every method, averaged over impression batches (size-weighted).

    Gradients flow to the activations only (parameters are frozen by `gradient_batches`), so the
    caller's model, its `requires_grad` flags and any `.grad` it holds come back untouched.
    """
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            out.retain_grad()
            captured[name] = out
        return fn

    def step(x: torch.Tensor, span: slice) -> dict[str, torch.Tensor]:
        y = targets[span].to(x.device)
        loss = F.cross_entropy(model(normalizer(x) if normalizer is not None else x), y, reduction="sum")
        loss.backward()
        acts = [captured[n].detach() for n in layers]
        grads = [captured[n].grad.detach() for n in layers]
        captured.clear()
        return {k: v.cpu() * len(x) for k, v in layer_importance(acts, grads).items()}

    with ForwardHooks([(modules[n], hook(n)) for n in layers]):
        parts = gradient_batches(model, images, step, batch_size=batch_size, device=device, desc="mgi")
    return {k: sum(p[k] for p in parts) / len(images) for k in parts[0]}
