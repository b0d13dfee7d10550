"""DeepInversion's BatchNorm-statistics loss with the statistics folded into the BatchNorm layer
(`synth.bn_stats=fused`).

The hooked version (`impressions.BNStatLoss`, `synth.bn_stats=hooks`) runs the eval-mode BatchNorm,
then a forward hook that reduces the same input again (`torch.var_mean`, Welford) and, in the
backward, a second full-size gradient branch at the BN input that autograd adds to the BN's own.
Profiling one ResNet-20 iteration on CPU (torch.profiler, batch 200) put `var_mean` at about a
quarter of the iteration: the Welford reduction along a contiguous axis runs 10-50x slower than a
plain sum there. Here, while the loss is active, each BN layer's forward is one autograd function:

    forward:  y = BN_eval(x) (the native kernel), and per channel c the batch mean and biased variance
              of x from two fast reductions per (sample, channel): m_nc = mean(x_nc), q_nc = ||x_nc||^2,
              mean_c = mean_n m_nc, var_c = mean_n q_nc / M_nc - mean_c^2 (combined in float64);
    backward: dL/dx = g * s_c + a_c + b_c * x (s_c = w_c / sqrt(rv_c + eps) the BN scale,
              b_c = 2 dL/dvar_c / M, a_c = dL/dmean_c / M - b_c mean_c; M = elements per channel),
              two in-place fused ops instead of the BN backward, the statistics' backward and their sum.

The one-pass variance loses about 1e-7 x E[x^2] / var to cancellation (float32 sums): values and
gradients agree with the textbook formula (`channel_mean_var_reference`) to ~1e-6 relative while a
channel's mean is within a few standard deviations of 0 (measured: 5e-8 at mean/std 0, 3.5e-7 at 5,
1e-5 at 20, 2e-4 at 100; tests/test_synth_options.py). The layer's parameters must not require gradients (synthesis runs the
model under `frozen_eval`); the BN layers get their own `forward` back when the block ends.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from c2ir.errors import C2IRError
from c2ir.extraction import bn_layers


def fast_channel_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of (N, C, ...) activations from one mean and one
    L2-norm reduction per (sample, channel) (no autograd; see the module docstring for the accuracy)."""
    n, c = x.shape[:2]
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).reshape(1, -1, c).transpose(1, 2)  # (1, C, N*H*W) view, no copy
    else:
        flat = x.reshape(n, c, -1)
    per = flat.shape[2]
    m_nc = flat.mean(2, dtype=torch.float32).double()
    q_nc = torch.linalg.vector_norm(flat, dim=2, dtype=torch.float32).double().square() / per
    mean = m_nc.mean(0)
    var = (q_nc.mean(0) - mean.square()).clamp_(min=0)
    return mean.float(), var.float()


class _StatBatchNorm(torch.autograd.Function):
    """Eval-mode BatchNorm that also returns its input's batch statistics, with one fused backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        mean, var = fast_channel_mean_var(x)
        y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        scale = torch.rsqrt(bn.running_var.float() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.float()
        ctx.save_for_backward(x, mean, scale)
        return y, mean, var

    @staticmethod
    def backward(ctx, g_y: torch.Tensor | None, g_mean: torch.Tensor | None,  # type: ignore[override]
                 g_var: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        x, mean, scale = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        b = (2.0 / count) * g_var if g_var is not None else torch.zeros_like(mean)
        a = g_mean / count - b * mean
        grad = torch.addcmul(a.to(x.dtype).view(shape), x, b.to(x.dtype).view(shape))
        if g_y is not None:
            grad.addcmul_(g_y, scale.to(x.dtype).view(shape))
        return grad, None


class BNTerms:
    """The BatchNorm layers of a model with DeepInversion's per-layer multipliers (the first layer's is
    `first_multiplier`), the terms one forward pass appends, and `pop()`: their sum or mean. Shared by both
    ways of computing the statistics (`impressions.BNStatLoss`, `FusedBNStatLoss`)."""

    def __init__(self, model: nn.Module, first_multiplier: float, reduce: str = "sum"):
        if reduce not in ("sum", "mean"):
            raise C2IRError(f"synth.bn_reduce={reduce!r} is not a reduction; choose sum or mean")
        self.reduce = reduce
        modules = dict(model.named_modules())
        self.bns = [modules[n] for n in bn_layers(model)]
        if not self.bns:
            raise C2IRError("the model has no BatchNorm layer with running statistics: DeepInversion needs "
                            "them to synthesise impressions (C2IR works only on BatchNorm models)")
        self.multipliers = [float(first_multiplier)] + [1.0] * (len(self.bns) - 1)
        self.terms: list[torch.Tensor] = []

    def pop(self) -> torch.Tensor:
        terms = torch.stack(self.terms)
        total = terms.mean() if self.reduce == "mean" else terms.sum()
        self.terms = []
        return total


class FusedBNStatLoss(BNTerms):
    """Same contract as `impressions.BNStatLoss` (a `with` block, `pop()` after each forward), with the
    statistics computed inside each BatchNorm layer by `_StatBatchNorm` (see the module docstring)."""

    def _forward(self, mult: float):
        def forward(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
            if any(p.requires_grad for p in bn.parameters(recurse=False)):
                raise C2IRError("synth.bn_stats=fused needs frozen BatchNorm parameters (run under frozen_eval)")
            y, mean, var = _StatBatchNorm.apply(x, bn)
            term = torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)
            self.terms.append(mult * term)
            return y
        return forward

    def __enter__(self) -> "FusedBNStatLoss":
        for bn, mult in zip(self.bns, self.multipliers):
            if "forward" in vars(bn):
                raise C2IRError(f"{type(bn).__name__} already has an instance forward; synth.bn_stats=fused "
                                "cannot wrap it (use synth.bn_stats=hooks)")
            bn.forward = types.MethodType(self._forward(mult), bn)
        return self

    def __exit__(self, *exc: object) -> None:
        for bn in self.bns:
            vars(bn).pop("forward", None)
        self.terms = []
