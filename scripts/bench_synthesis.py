"""Synthesis cost per iteration vs a bare forward+backward w.r.t. the input (paired, same batch).

A DeepInversion iteration = jitter/flip + forward with BN-statistics hooks + loss terms + backward
+ Adam step + clipping. The target is <= 1.15x the bare forward+backward on CPU. GPU options
(each measurable by its flag): --channels-last, --bf16 (autocast), --compile.

    python scripts/bench_synthesis.py [--batch 200] [--iters 5] [--repeats 7] [--device cpu] [--arch resnet20]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from bench_common import bench_model, median_ratio, paired
from c2ir.data.imageset import Normalizer
from c2ir.device import resolve_device
from c2ir.impressions import SynthConfig, synthesize_batch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device = resolve_device(args.device)
    model = bench_model(args.arch, device)
    for q in model.parameters():
        q.requires_grad_(False)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if args.compile else model
    norm = Normalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    targets = torch.arange(args.batch) % 10
    x0 = torch.randn(args.batch, 3, 32, 32, device=device)
    dtype = torch.bfloat16 if args.bf16 else None
    cfg = SynthConfig(iterations=args.iters, jitter=2, flip=True)

    def bare() -> None:
        for _ in range(args.iters):
            x = x0.clone().requires_grad_(True)
            inp = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(run_model(inp).float(), targets.to(device))
            loss.backward()

    def synth() -> None:
        synthesize_batch(run_model, norm, targets, (3, 32, 32), cfg, seed=0, device=device,
                         autocast_dtype=dtype, channels_last=args.channels_last)

    bare(), synth()  # warm-up (and compilation)
    ta, tb = paired(bare, synth, args.repeats, device)
    print(f"device={device} arch={args.arch} batch={args.batch} threads={torch.get_num_threads()} "
          f"channels_last={args.channels_last} bf16={args.bf16} compile={args.compile}")
    print(f"bare forward+backward: median {1000 * statistics.median(ta) / args.iters:.1f} ms/iteration")
    print(f"synthesis iteration:   median {1000 * statistics.median(tb) / args.iters:.1f} ms/iteration")
    print(f"time ratio synthesis/bare (median of {args.repeats} pairs): {median_ratio(tb, ta):.3f}")


if __name__ == "__main__":
    main()
