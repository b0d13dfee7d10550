"""Synthesis cost per iteration vs a bare forward+backward w.r.t. the input (paired, same batch).

A DeepInversion iteration = jitter/flip + forward with BN-statistics hooks + loss terms + backward
+ Adam step + clipping. The target is <= 1.15x the bare forward+backward on CPU.

Every variant is measured side by side in one run (interleaved, order rotated each round), each
against a bare forward+backward with the same option:
  eager           fp32, default memory format, BN statistics from forward hooks (`channel_mean_var`,
                  synth.bn_stats=hooks: synth=deepinversion's arithmetic)
  fused           synth.bn_stats=fused: the statistics inside the BN layer (c2ir.fused_bn)
  fused_cl        synth.bn_stats=fused with synth.channels_last=true
  previous        as eager, with the statistics of the previous release (sums + autograd)
  reference       as eager, with the textbook `torch.var_mean` + autograd statistics
  channels_last   synth.channels_last=true
  bf16            synth.autocast=bf16
  compile         synth.compile=true (torch.compile, inductor; compiled during the warm-up)

    python scripts/bench_synthesis.py [--variants eager,fused,previous,channels_last,bf16,compile] [--batch 200]
                                      [--iters 3] [--repeats 7] [--device cpu] [--arch resnet20] [--clock cpu]

`--clock cpu` times with the process's CPU time instead of the wall clock: with one torch thread
(`--threads 1`) that is the work done, much less disturbed by other jobs on a shared machine than
the wall time (CPU only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from bench_common import bench_model, sync
from c2ir.data.imageset import Normalizer
from c2ir.device import resolve_device
from c2ir.impressions import SynthConfig, channel_mean_var_reference, synthesize_batch

VARIANTS = ("eager", "fused", "fused_cl", "previous", "reference", "channels_last", "bf16", "compile")


def previous_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics shipped before issue 13 (sums over H*W then N, E[x^2] - mean^2, autograd backward)."""
    flat = x.flatten(2) if x.dim() > 2 else x.unsqueeze(2)
    count = flat.shape[0] * flat.shape[2]
    mean = flat.sum(dim=2).sum(dim=0) / count
    mean_sq = flat.square().sum(dim=2).sum(dim=0) / count
    return mean, (mean_sq - mean * mean).clamp(min=0)


class _Wrapped(torch.nn.Module):
    """`model` behind a distinct forward, so torch.compile keeps a separate graph cache for it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def make_variant(name: str, args: argparse.Namespace, device: torch.device):
    """(bare, synth) callables of one variant."""
    model = bench_model(args.arch, device)
    for q in model.parameters():
        q.requires_grad_(False)
    channels_last = name in ("channels_last", "fused_cl")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if name == "compile" else model
    # the bare pass gets its own compiled wrapper: dynamo caches graphs per top-level code object and does
    # not guard on forward hooks added later (skip_nnmodule_hook_guards), so a hook-less graph compiled by
    # the bare pass on `model` would be reused by the synthesis and its BN hooks would never fire
    bare_model = torch.compile(_Wrapped(model)) if name == "compile" else model
    dtype = torch.bfloat16 if name == "bf16" else None
    stats_fn = {"previous": previous_stats, "reference": channel_mean_var_reference}.get(name)
    norm = Normalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    targets = torch.arange(args.batch) % 10
    x0 = torch.randn(args.batch, 3, 32, 32, device=device)
    cfg = SynthConfig(iterations=args.iters, jitter=2, flip=True, warmup_iterations=0, lr_schedule="cosine",
                      stop_patience=0, bn_stats="fused" if name.startswith("fused") else "hooks")

    def bare() -> None:
        for _ in range(args.iters):
            x = x0.clone().requires_grad_(True)
            inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(bare_model(inp).float(), targets.to(device))
            loss.backward()

    def synth() -> None:
        synthesize_batch(run_model, norm, targets, (3, 32, 32), cfg, seed=0, device=device,
                         autocast_dtype=dtype, channels_last=channels_last, stats_fn=stats_fn)

    return bare, synth


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="eager,previous,channels_last,bf16,compile")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"bench_synthesis: error: unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    device = resolve_device(args.device)
    print(f"device={device} arch={args.arch} batch={args.batch} iters/timing={args.iters} repeats={args.repeats} "
          f"threads={torch.get_num_threads()} clock={args.clock} torch={torch.__version__} "
          f"load average at start {os.getloadavg()}")
    fns = {}
    for name in names:
        bare, synth = make_variant(name, args, device)
        t0 = time.perf_counter()
        bare(), synth()  # warm-up (and compilation)
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s")
        fns[(name, "bare")], fns[(name, "synth")] = bare, synth
    order = list(fns)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in order}
    for r in range(args.repeats):
        shift = r % len(order)
        for k in order[shift:] + order[:shift]:
            sync(device)
            t0 = clock()
            fns[k]()
            sync(device)
            times[k].append((clock() - t0) / args.iters)
    base = statistics.median(times[(names[0], "bare")])
    print(f"load average at end {os.getloadavg()}")
    print(f"{'variant':14s} {'bare min/med ms':>17s} {'synth min/med ms':>18s} {'ratio med':>9s} {'ratio min':>9s} "
          f"{'synth/' + names[0] + ' bare':>16s}")
    for name in names:
        tb, ts = times[(name, "bare")], times[(name, "synth")]
        paired = statistics.median(s / b for s, b in zip(ts, tb))
        print(f"{name:14s} {1000 * min(tb):7.1f}/{1000 * statistics.median(tb):7.1f}   "
              f"{1000 * min(ts):7.1f}/{1000 * statistics.median(ts):7.1f}   {paired:9.3f} {min(ts) / min(tb):9.3f} "
              f"{statistics.median(ts) / base:16.3f}")
    print("ratio med: median over repeats of synth/bare timed in the same round; ratio min: min(synth)/min(bare)")


if __name__ == "__main__":
    main()
