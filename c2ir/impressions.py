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

import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from c2ir.adam import TensorAdam
from c2ir.cache import DamagedFile, discard_verified, load_verified
from c2ir.data.imageset import Normalizer
from c2ir.errors import C2IRError
from c2ir.extraction import ForwardHook, ForwardHooks
from c2ir.fused_bn import BNTerms, FusedBNStatLoss
from c2ir.models.state import frozen_eval
from c2ir.schema import SynthConfig  # the settings are declared with the other schemas
from c2ir.synth_schedule import lr_values, phase_iterations, plateaued

log = logging.getLogger(__name__)

StatsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class BatchResult:
    """One synthesised batch: pixel-space images in [0, 1], targets, and loss curves (one value per
    iteration run: a batch stopped on a plateau has shorter curves); `low_iterations` of them were at
    half resolution (`synth.warmup_iterations`)."""

    images: torch.Tensor
    targets: torch.Tensor
    curves: dict[str, torch.Tensor] = field(default_factory=dict)
    low_iterations: int = 0

    @property
    def iterations(self) -> int:
        """Iterations run, half-resolution ones included."""
        return len(self.curves["total"]) if self.curves else 0


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


class BNStatLoss(BNTerms, ForwardHooks):
    """Hooks on every BatchNorm layer that measure the distance of the batch's input statistics
    to the running statistics (DeepInversion's feature-distribution regulariser)."""

    def __init__(self, model: nn.Module, first_multiplier: float, reduce: str = "sum",
                 stats_fn: StatsFn | None = None):
        self.stats_fn = stats_fn or channel_mean_var
        BNTerms.__init__(self, model, first_multiplier, reduce)
        ForwardHooks.__init__(self)

    def hooks(self) -> list[tuple[nn.Module, ForwardHook]]:
        return [(bn, self._hook(bn, mult)) for bn, mult in zip(self.bns, self.multipliers)]

    def _hook(self, bn: nn.Module, mult: float):
        def hook(_m: nn.Module, inp: tuple, _out: torch.Tensor) -> None:
            mean, var = self.stats_fn(inp[0])
            term = torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)
            self.terms.append(mult * term)
        return hook


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
                     init: torch.Tensor | None = None, progress: tqdm | None = None) -> BatchResult:
    """Optimise one batch of impressions for `targets` (1-D class indices), from noise or from `init`
    (normalised inputs). With `cfg.warmup_iterations` > 0, DeepInversion's multi-resolution schedule
    (their ImageNet setting 0): that many iterations where the model sees the images 2x average-pooled
    (jitter halved), then `cfg.iterations` at full size, each phase with a fresh Adam and the same seed
    (images too small to halve, below `cfg.warmup_min_size` at half size, run the warm-up's cost at full
    size: `synth_schedule.phase_iterations`).
    `stats_fn` computes the per-channel BN-input statistics of `bn_stats=hooks` (default
    `channel_mean_var`; tests pass the reference formula). `progress`: a bar advanced once per
    iteration (by the iterations a plateau stop skips, too); None: a bar of this batch only."""
    kw = dict(autocast_dtype=autocast_dtype, channels_last=channels_last, stats_fn=stats_fn, progress=progress)
    low_its, full_its = phase_iterations(min(shape[-2:]), cfg.iterations, cfg.warmup_iterations, cfg.warmup_min_size)
    cfg = dataclasses.replace(cfg, iterations=full_its, warmup_iterations=low_its)
    with frozen_eval(model):
        if low_its <= 0:
            return _synthesize_batch(model, normalizer, targets, shape, cfg, seed, device, desc, init=init, **kw)
        low = nn.Sequential(nn.AvgPool2d(2), model)
        first = _synthesize_batch(low, normalizer, targets, shape,
                                  dataclasses.replace(cfg, iterations=low_its, jitter=cfg.jitter // 2),
                                  seed, device, f"{desc} (half resolution)", init=init, **kw)
        second = _synthesize_batch(model, normalizer, targets, shape, cfg, seed, device, desc,
                                   init=normalizer(first.images), **kw)
    curves = {k: torch.cat([first.curves[k], v]) for k, v in second.curves.items()}
    return BatchResult(second.images, second.targets, curves, low_iterations=first.iterations)


def _synthesize_batch(model: nn.Module, normalizer: Normalizer, targets: torch.Tensor, shape: Sequence[int],
                      cfg: SynthConfig, seed: int, device: torch.device | str, desc: str,
                      autocast_dtype: torch.dtype | None, channels_last: bool, stats_fn: StatsFn | None,
                      init: torch.Tensor | None = None, progress: tqdm | None = None) -> BatchResult:
    g = torch.Generator().manual_seed(seed)
    n = len(targets)
    x = torch.randn((n, *shape), generator=g).to(device)
    if init is not None:
        x = init.detach().clone().to(device)
    x.requires_grad_(True)
    lo, hi = (b.to(device) for b in normalizer.bounds())
    targets = targets.to(device)
    opt = TensorAdam(x, cfg.betas, eps=1e-8)  # torch.optim.Adam's arithmetic, without importing torch._dynamo
    lrs = lr_values(cfg.lr_schedule, cfg.lr, cfg.iterations)
    rolls = torch.randint(-cfg.jitter, cfg.jitter + 1, (cfg.iterations, 2), generator=g) if cfg.jitter else None
    flips = torch.rand(cfg.iterations, generator=g) < 0.5
    names = ("total", "ce", "bn", "tv", "l2")
    curves = {k: torch.zeros(cfg.iterations) for k in names}
    losses: list[float] = []
    bar = progress if progress is not None else tqdm(total=cfg.iterations, desc=desc, leave=False,
                                                     disable=not sys.stderr.isatty())
    bn_loss = (FusedBNStatLoss(model, cfg.first_bn_multiplier, cfg.bn_reduce) if cfg.bn_stats == "fused"
               else BNStatLoss(model, cfg.first_bn_multiplier, cfg.bn_reduce, stats_fn))
    done = cfg.iterations
    with bn_loss:
        for it in range(cfg.iterations):
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
            opt.zero_grad()
            loss.backward()
            opt.step(lrs[it])
            with torch.no_grad():
                x.data = torch.maximum(torch.minimum(x.data, hi), lo)
            for k, v in zip(names, (loss, ce, bn, tv, l2)):
                curves[k][it] = v.detach().float().cpu()
            bar.update(1)
            if (it + 1) % max(1, cfg.iterations // 4) == 0:
                log.info("%s: iteration %d/%d, loss %.3f (ce %.3f, bn %.3f)", desc, it + 1, cfg.iterations,
                         float(curves["total"][it]), float(curves["ce"][it]), float(curves["bn"][it]))
            losses.append(float(curves["total"][it]))
            if plateaued(losses, cfg.stop_patience, cfg.stop_tol):
                done = it + 1
                log.info("%s: loss plateaued, stopped at iteration %d/%d", desc, done, cfg.iterations)
                bar.update(cfg.iterations - done)
                break
    if progress is None:
        bar.close()
    pixels = normalizer.to_pixels(x.detach()).clamp_(0, 1).cpu()
    return BatchResult(pixels, targets.cpu(), {k: v[:done] for k, v in curves.items()})


def synthesize_impressions(model: nn.Module, normalizer: Normalizer, num_classes: int, shape: Sequence[int],
                           cfg: SynthConfig, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Every batch of impressions in order: (pixel images in [0, 1], targets), behind one progress bar. The
    `synthesize` stage runs the same batches one by one (resumable, sharded); the result is the same."""
    n = num_batches(num_classes, cfg.per_class, cfg.batch_size)
    per_batch = sum(phase_iterations(min(shape[-2:]), cfg.iterations, cfg.warmup_iterations, cfg.warmup_min_size))
    parts = []
    with tqdm(total=n * per_batch, unit="it", desc="synthesize", disable=not sys.stderr.isatty()) as bar:
        for b in range(n):
            parts.append(synthesize_batch(model, normalizer, batch_targets(num_classes, cfg.per_class, cfg.batch_size, b),
                                          shape, cfg, batch_seed(cfg.seed, b), device, desc=f"synthesize batch {b + 1}/{n}",
                                          progress=bar))
            bar.set_description_str(f"synthesize {sum(len(p.targets) for p in parts)}/{num_classes * cfg.per_class} "
                                    "impressions")
    return torch.cat([p.images for p in parts]), torch.cat([p.targets for p in parts])


def stack_curves(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-batch loss curves as (batches, longest) tensors; a batch stopped early is padded with NaN."""
    out = {}
    for name in parts[0]:
        longest = max(len(p[name]) for p in parts)
        rows = torch.full((len(parts), longest), float("nan"))
        for i, p in enumerate(parts):
            rows[i, :len(p[name])] = p[name]
        out[name] = rows
    return out


def last_values(curves: torch.Tensor) -> torch.Tensor:
    """The last non-NaN value of each row of a (batches, iterations) curve tensor."""
    finite = ~torch.isnan(curves)
    last = finite.shape[1] - 1 - finite.flip(1).float().argmax(1)
    return curves[torch.arange(len(curves)), last]


def impression_grid(images: torch.Tensor, targets: torch.Tensor, num_classes: int, per_row: int = 10) -> torch.Tensor:
    """A (3, H, W) grid with one row per class (the first `per_row` impressions of each), 1-pixel white
    borders (the layout of torchvision's `make_grid(..., padding=1, pad_value=1)`, without importing it)."""
    rows = []
    for c in range(num_classes):
        sel = images[targets == c][:per_row]
        if len(sel) < per_row:
            sel = torch.cat([sel, torch.zeros(per_row - len(sel), *images.shape[1:])])
        rows.append(sel)
    tiles = torch.cat(rows)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    _, ch, h, w = tiles.shape
    n_rows = math.ceil(len(tiles) / per_row)
    grid = torch.ones(ch, n_rows * (h + 1) + 1, per_row * (w + 1) + 1, dtype=tiles.dtype)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, per_row)
        grid[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = tile
    return grid


# ----- batch files and the grid picture (the synthesize stage) ----------------------------------------
def batch_problem(t: dict[str, torch.Tensor], targets: torch.Tensor, shape: tuple[int, int, int]) -> str | None:
    """Why the tensors of a batch file are not batch `targets` of images of `shape` (None: they are)."""
    if not {"images", "targets"} <= set(t) or not any(k.startswith("curve/") for k in t):
        return "missing tensors"
    if not torch.equal(t["targets"], targets):
        return "its targets are not this batch's classes"
    if tuple(t["images"].shape) != (len(targets), *shape) or not torch.isfinite(t["images"]).all():
        return f"images of shape {tuple(t['images'].shape)} (expected {(len(targets), *shape)}, finite)"
    return None


def load_batch(path: Path, targets: torch.Tensor, shape: tuple[int, int, int]) -> dict[str, torch.Tensor] | None:
    """A finished batch file, verified (content hash, then its targets and image shape); a damaged one is
    deleted with a warning (None: recompute it), so it is never assembled into the impressions."""
    try:
        t, _ = load_verified(path)
        problem = batch_problem(t, targets, shape)
    except DamagedFile as exc:
        problem = str(exc)
    if problem is None:
        return t
    log.warning("synthesize: damaged batch file %s (%s); discarding and recomputing it", path, problem)
    discard_verified(path)
    return None


def save_grid(grid: torch.Tensor, path: Path) -> None:
    """The impression grid as a PNG, scaled up to about 256 px (nearest neighbour)."""
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    scale = max(1, 256 // max(arr.shape[:2]))
    img = Image.fromarray(np.ascontiguousarray(arr))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
