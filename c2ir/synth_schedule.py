"""When a synthesis batch does what, and what it costs (pure functions, no model).

- `lr_values`: the learning rate of every iteration for `synth.lr_schedule`.
- `phase_iterations`: how many iterations of a batch run at half and at full resolution.
- `plateaued`: DeepInversion batches run a fixed number of iterations; `synth.stop_patience`
  stops a batch early once its loss has stopped improving (early stopping on a plateau, as in
  Prechelt, "Early Stopping - But When?", 1998, applied to the optimised inputs instead of weights).
- `synthesis_cost`: forward+backward equivalents of a synthesis (the cost axis of
  `scripts/bench_synthesis_pareto.py`): one unit is one image through the model and back at full
  resolution; an iteration at half resolution (`synth.warmup_iterations`) counts 1/4 (a convolution's
  cost is proportional to the number of pixels).
- `ProgressPlan`: the totals of the synthesis progress bar (iterations of this process's batches,
  those already done when resuming, and the impressions they hold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SCHEDULES = ("cosine", "linear", "constant")
LOW_RES_FACTOR = 0.25  # cost of one half-resolution iteration relative to a full-resolution one


def lr_values(schedule: str, lr: float, iterations: int) -> list[float]:
    """Learning rate at iterations 0 .. iterations-1.

    `cosine`: from `lr` to 0 over `iterations` (SGDR's annealing without restarts, Loshchilov & Hutter,
    ICLR 2017), as DeepInversion and the pre-issue-20 default used it; the values are computed with the
    recursive update of torch's `CosineAnnealingLR`, so `synth=deepinversion` repeats its impressions
    bit for bit. `linear`: from `lr` to 0 in equal steps (lr * (1 - t / T)). `constant`: `lr` throughout.
    """
    t_max = max(int(iterations), 1)
    if schedule == "constant":
        return [float(lr)] * iterations
    if schedule == "linear":
        return [float(lr) * (1.0 - t / t_max) for t in range(iterations)]
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    out: list[float] = []
    cur = float(lr)
    for t in range(iterations):
        if t > 0:  # torch.optim.lr_scheduler.CosineAnnealingLR.get_lr with eta_min = 0 (chainable form)
            if (t - 1 - t_max) % (2 * t_max) == 0:
                cur = cur + lr * (1 - math.cos(math.pi / t_max)) / 2
            else:
                cur = (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max)) * cur
        out.append(cur)
    return out


def phase_iterations(image_size: int, iterations: int, warmup_iterations: int, warmup_min_size: int) -> tuple[int, int]:
    """(half-resolution, full-resolution) iterations of one batch. The half-resolution warm-up runs when half
    the image is at least `warmup_min_size` pixels; a smaller image (the 8 px digits: 4 px at half size,
    too small for the model's convolutions and pooling to see anything) runs the warm-up's cost at full
    resolution instead, a quarter of its iterations (`LOW_RES_FACTOR`)."""
    if warmup_iterations <= 0:
        return 0, iterations
    if image_size // 2 >= warmup_min_size:
        return warmup_iterations, iterations
    return 0, iterations + round(warmup_iterations * LOW_RES_FACTOR)


def plateaued(losses: Sequence[float], patience: int, tol: float) -> bool:
    """True when the best loss of the last `patience` iterations improves on the best before them by
    less than the fraction `tol` (of its magnitude). patience <= 0 never stops."""
    if patience <= 0 or len(losses) <= patience:
        return False
    before = min(losses[:-patience])
    recent = min(losses[-patience:])
    return before - recent < tol * abs(before)


def synthesis_cost(images_per_batch: Sequence[int], full_iterations: Sequence[int],
                   low_iterations: Sequence[int] | None = None) -> float:
    """Forward+backward equivalents: sum over batches of images x (full-res iterations + 1/4 x half-res
    iterations), as run (early-stopped batches count the iterations they ran)."""
    low = low_iterations if low_iterations is not None else [0] * len(images_per_batch)
    if not len(images_per_batch) == len(full_iterations) == len(low):
        raise ValueError("one entry per batch in images_per_batch, full_iterations and low_iterations")
    return float(sum(n * (f + LOW_RES_FACTOR * lo) for n, f, lo in zip(images_per_batch, full_iterations, low)))


@dataclass(frozen=True)
class ProgressPlan:
    """Totals of the progress bar of one process's share of a synthesis."""

    total_iterations: int   # iterations of every batch this process runs (done ones included)
    done_iterations: int    # of them, in batches already finished (resumed)
    total_impressions: int  # impressions of this process's batches
    done_impressions: int


def progress_plan(batch_sizes: Sequence[int], done: Sequence[bool], iterations_per_batch: int) -> ProgressPlan:
    """`batch_sizes[i]` impressions in this process's i-th batch, `done[i]` if it is already on disk."""
    if len(batch_sizes) != len(done):
        raise ValueError("one done flag per batch")
    n_done = sum(1 for d in done if d)
    return ProgressPlan(total_iterations=len(batch_sizes) * iterations_per_batch,
                        done_iterations=n_done * iterations_per_batch,
                        total_impressions=int(sum(batch_sizes)),
                        done_impressions=int(sum(n for n, d in zip(batch_sizes, done) if d)))


def cost_summary(art: Any) -> dict:
    """What the synthesis cost: impressions, forward+backward equivalents (`synth_schedule.synthesis_cost`), the
    wall seconds of the process that built it (resumed or sharded work not included) and, since issue 20, the
    wall and CPU seconds of its batches summed (`batch_seconds`, `batch_cpu_seconds`: resumed batches and
    other ranks' included)."""
    s = art.json("summary.json")
    cost = s.get("cost")
    if cost is None:  # built before issue 20: every batch ran all its iterations
        synth = art.manifest.get("config", {})
        iterations = synth.get("synth.iterations", synth.get("synth", {}).get("iterations", 0))
        warmup = synth.get("synth.warmup_iterations", synth.get("synth", {}).get("warmup_iterations")) or 0
        cost = synthesis_cost([s["count"]], [int(iterations)], [int(warmup)])
    return {"impressions": int(s["count"]), "cost": float(cost), "seconds": art.manifest.get("seconds"),
            **art.manifest.get("timing", {})}
