"""DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020), written from the paper.

Class-conditional "impressions" are optimised from noise so that the fixed model
predicts the target class while the batch statistics at the input of every
BatchNorm layer match that layer's running mean and variance:

    L(x) = CE(f(x), y)
         + a_bn * sum_l m_l (||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2)
         + a_tv * TV(x) + a_l2 * ||x||_2

with m_1 = `first_bn_multiplier` and m_l = 1 otherwise. `bn_reduce: mean` divides the BN sum by
the number of BatchNorm layers L (a per-layer average), so the BN term's weight relative to the
class term does not grow with depth. Images live in the model's
normalised input space and are clipped to the valid pixel range after each step;
random jitter (roll) and flips augment every step. Each batch has its own seed, so
batches are independent: they can be resumed one by one and split across processes.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from c2ir.data.imageset import Normalizer
from c2ir.errors import C2IRError
from c2ir.extraction import ForwardHook, ForwardHooks, bn_layers
from c2ir.models.state import frozen_eval
from c2ir.schema import SynthConfig  # the settings are declared with the other schemas

log = logging.getLogger(__name__)

StatsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BatchResult:
    """One synthesised batch: pixel-space images in [0, 1], targets, and loss curves."""

    images: torch.Tensor
    targets: torch.Tensor
    curves: dict[str, torch.Tensor] = field(default_factory=dict)


def batch_targets(num_classes: int, per_class: int, batch_size: int, batch_index: int) -> torch.Tensor:
    """Class-balanced targets: impression i has class i mod K, batch b holds impressions [bB, (b+1)B)."""
    total = num_classes * per_class
    start = batch_index * batch_size
    return torch.arange(start, min(start + batch_size, total)) % num_classes


def num_batches(num_classes: int, per_class: int, batch_size: int) -> int:
    return math.ceil(num_classes * per_class / batch_size)


def batch_seed(seed: int, batch_index: int) -> int:
    """Independent seed per batch: the impressions do not depend on how batches are scheduled."""
    return (int(seed) * 1_000_003 + int(batch_index) * 7919 + 17) % (2**63 - 1)


def channel_mean_var_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of (N, C, ...) activations, by the textbook formula
    with autograd (the definition `channel_mean_var` must match; tests and benchmarks compare them)."""
    dims = (0, *range(2, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return mean, var


def channel_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and (biased) variance of (N, C, ...) activations, float32.

    Same values as `channel_mean_var_reference`, at a lower cost per synthesis iteration: the
    forward is one reduction over the input, the backward one fused elementwise op,
    dL/dx = a_c + b_c * x with b_c = 2 dL/dvar_c / M and a_c = dL/dmean_c / M - b_c * mean_c
    (M = elements per channel), instead of autograd's chain of full-size intermediates
    (docs/BENCHMARKS.md section 5).
    """
    return _ChannelMeanVar.apply(x)


class _ChannelMeanVar(torch.autograd.Function):
    """`channel_mean_var` with a closed-form backward (see there)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        c = x.shape[1]
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # (N, H, W, C) in memory: one column reduction over the N*H*W rows, no copy
            var, mean = torch.var_mean(x.permute(0, 2, 3, 1).reshape(-1, c), dim=0, correction=0)
        else:
            flat = x.reshape(x.shape[0], c, -1)
            # per (sample, channel) over the contiguous spatial axis, then exactly combined over samples:
            # var_c = mean_n [var_nc + (mean_nc - mean_c)^2] (no E[x^2] - E[x]^2 cancellation)
            v_nc, m_nc = torch.var_mean(flat, dim=2, correction=0)
            v_nc, m_nc = v_nc.float(), m_nc.float()
            mean = m_nc.mean(0)
            var = (v_nc + (m_nc - mean).square()).mean(0)
        mean, var = mean.float(), var.float()
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, g_mean: torch.Tensor, g_var: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        b = 2.0 * g_var / count
        a = g_mean / count - b * mean
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(a.to(x.dtype).view(shape), b.to(x.dtype).view(shape), x)


class BNStatLoss(ForwardHooks):
    """Hooks on every BatchNorm layer that measure the distance of the batch's input statistics
    to the running statistics (DeepInversion's feature-distribution regulariser)."""

    def __init__(self, model: nn.Module, first_multiplier: float, reduce: str = "sum",
                 stats_fn: StatsFn | None = None):
        self.stats_fn = stats_fn or channel_mean_var
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
        super().__init__()

    def hooks(self) -> list[tuple[nn.Module, ForwardHook]]:
        return [(bn, self._hook(bn, mult)) for bn, mult in zip(self.bns, self.multipliers)]

    def _hook(self, bn: nn.Module, mult: float):
        def hook(_m: nn.Module, inp: tuple, _out: torch.Tensor) -> None:
            mean, var = self.stats_fn(inp[0])
            term = torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)
            self.terms.append(mult * term)
        return hook

    def pop(self) -> torch.Tensor:
        terms = torch.stack(self.terms)
        total = terms.mean() if self.reduce == "mean" else terms.sum()
        self.terms = []
        return total


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """L2 total variation over horizontal, vertical and both diagonal neighbours (batch sum of norms)."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))


def synthesize_batch(model: nn.Module, normalizer: Normalizer, targets: torch.Tensor, shape: Sequence[int],
                     cfg: SynthConfig, seed: int, device: torch.device | str = "cpu",
                     desc: str = "synthesize", autocast_dtype: torch.dtype | None = None,
                     channels_last: bool = False, stats_fn: StatsFn | None = None,
                     init: torch.Tensor | None = None) -> BatchResult:
    """Optimise one batch of impressions for `targets` (1-D class indices), from noise or from `init`
    (normalised inputs, e.g. a multi-resolution warm-up's result). `stats_fn` computes the
    per-channel BN-input statistics (default `channel_mean_var`; tests pass the reference formula)."""
    with frozen_eval(model):
        return _synthesize_batch(model, normalizer, targets, shape, cfg, seed, device, desc, autocast_dtype, channels_last,
                                 stats_fn, init)


def _synthesize_batch(model: nn.Module, normalizer: Normalizer, targets: torch.Tensor, shape: Sequence[int],
                      cfg: SynthConfig, seed: int, device: torch.device | str, desc: str,
                      autocast_dtype: torch.dtype | None, channels_last: bool, stats_fn: StatsFn | None,
                      init: torch.Tensor | None = None) -> BatchResult:
    g = torch.Generator().manual_seed(seed)
    n = len(targets)
    x = torch.randn((n, *shape), generator=g).to(device)
    if init is not None:
        x = init.detach().clone().to(device)
    x.requires_grad_(True)
    lo, hi = (b.to(device) for b in normalizer.bounds())
    targets = targets.to(device)
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.iterations, 1), eta_min=0.0)
    rolls = torch.randint(-cfg.jitter, cfg.jitter + 1, (cfg.iterations, 2), generator=g) if cfg.jitter else None
    flips = torch.rand(cfg.iterations, generator=g) < 0.5
    names = ("total", "ce", "bn", "tv", "l2")
    curves = {k: torch.zeros(cfg.iterations) for k in names}
    with BNStatLoss(model, cfg.first_bn_multiplier, cfg.bn_reduce, stats_fn) as bn_loss:
        for it in tqdm(range(cfg.iterations), desc=desc, leave=False, disable=not sys.stderr.isatty()):
            inp = x
            if rolls is not None:
                inp = torch.roll(inp, shifts=(int(rolls[it, 0]), int(rolls[it, 1])), dims=(2, 3))
            if cfg.flip and bool(flips[it]):
                inp = torch.flip(inp, dims=(3,))
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                logits = model(inp)
                ce = F.cross_entropy(logits.float(), targets)
                bn = bn_loss.pop().float()
            tv = total_variation(x)
            l2 = torch.linalg.vector_norm(x.flatten(1), dim=1).mean()
            loss = cfg.ce_weight * ce + cfg.bn_weight * bn + cfg.tv_weight * tv + cfg.l2_weight * l2
            if not torch.isfinite(loss):
                raise C2IRError(
                    f"synthesis diverged: loss is {loss.item()} at iteration {it} ({desc}); "
                    f"lower synth.lr (now {cfg.lr}) or synth.bn_weight (now {cfg.bn_weight})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.data = torch.maximum(torch.minimum(x.data, hi), lo)
            for k, v in zip(names, (loss, ce, bn, tv, l2)):
                curves[k][it] = v.detach().float().cpu()
            if (it + 1) % max(1, cfg.iterations // 4) == 0:
                log.info("%s: iteration %d/%d, loss %.3f (ce %.3f, bn %.3f)", desc, it + 1, cfg.iterations,
                         float(curves["total"][it]), float(curves["ce"][it]), float(curves["bn"][it]))
    pixels = normalizer.to_pixels(x.detach()).clamp_(0, 1).cpu()
    return BatchResult(pixels, targets.cpu(), curves)


def impression_grid(images: torch.Tensor, targets: torch.Tensor, num_classes: int, per_row: int = 10) -> torch.Tensor:
    """A (C, H, W) grid with one row per class (the first `per_row` impressions of each)."""
    from torchvision.utils import make_grid

    rows = []
    for c in range(num_classes):
        sel = images[targets == c][:per_row]
        if len(sel) < per_row:
            sel = torch.cat([sel, torch.zeros(per_row - len(sel), *images.shape[1:])])
        rows.append(sel)
    return make_grid(torch.cat(rows), nrow=per_row, padding=1, pad_value=1.0)
