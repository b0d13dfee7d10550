"""Wall time of synthesis settings side by side in one run on one machine (issue 20's cost goal).

For each model, each setting (e.g. `synth=deepinversion` and `synth=default`) runs `c2ir synthesize` in a
subprocess, `--repeats` times, the order rotated every round. The model (trained for digits) is made
once first, untimed. Each synthesis gets a fresh `synth.seed` per round (the same for every setting), and
the script deletes the synthesize artifact it just made, so nothing is a cache hit. Reported per setting:
the synthesis build time (the artifact manifest's `seconds`: the batches plus assembling them, without
Python start-up, imports and model loading), the CPU seconds of its batches (the manifest's
`timing.batch_cpu_seconds`: with `threads=1` the work done, which other jobs on a shared machine disturb much
less than the wall time), the subprocess wall time, the forward+backward equivalents, and the times
relative to the first setting (medians over rounds).

    python scripts/bench_synthesis_ratio.py --models digits,resnet20 --settings synth=deepinversion,synth=default
    python scripts/bench_synthesis_ratio.py --models digits --repeats 3 --cache-root outputs/ratio -- threads=1

Use a cache root of its own (default outputs/bench_ratio/cache): synthesize artifacts in it are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_models import MODELS

SYNTH_MISS = re.compile(r"cache miss: computing synthesize/([0-9a-f]{16})")


def c2ir(stage: str, args: list[str]) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "c2ir", stage, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench_synthesis_ratio: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr, wall


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits,resnet20")
    p.add_argument("--settings", default="synth=deepinversion,synth=default",
                   help="comma list; each entry is space-separated overrides")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cache-root", type=Path, default=Path("outputs/bench_ratio/cache"))
    args = p.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    print(f"load average at start {os.getloadavg()}", flush=True)
    for model in [m for m in args.models.split(",") if m]:
        base = [*MODELS[model], f"cache_root={args.cache_root}", *extra]
        if not MODELS[model]:  # the embedded digits model is trained first, untimed (the CIFAR models are checkpoints)
            c2ir("train", base)
        times: dict[str, list[tuple[float, float, float, float]]] = {s: [] for s in settings}
        for r in range(args.repeats):
            order = settings[r % len(settings):] + settings[:r % len(settings)]
            for s in order:
                out, wall = c2ir("synthesize", [*base, *s.split(), f"synth.seed={1000 + r}"])
                hit = SYNTH_MISS.search(out)
                if hit is None:
                    raise SystemExit(f"bench_synthesis_ratio: {s}: the synthesis was a cache hit; use a fresh --cache-root")
                art = args.cache_root.expanduser() / "synthesize" / hit.group(1)
                manifest = json.loads((art / "manifest.json").read_text())
                seconds, cpu = float(manifest["seconds"]), float(manifest["timing"]["batch_cpu_seconds"])
                cost = float(json.loads((art / "summary.json").read_text())["cost"])
                shutil.rmtree(art)
                times[s].append((seconds, wall, cpu, cost))
                print(f"  {model} round {r + 1} {s}: synthesis {seconds:.2f} s (CPU of its batches {cpu:.2f} s), "
                      f"process {wall:.2f} s", flush=True)
        ref = [statistics.median(t[i] for t in times[settings[0]]) for i in range(3)]
        print(f"\n{model}: median over {args.repeats} round(s)")
        print("| setting | synthesis s | its batches' CPU s | process s | cost (fwd+bwd) | synthesis / first | "
              "CPU / first | process / first |")
        print("|---|---|---|---|---|---|---|---|")
        for s in settings:
            med = [statistics.median(t[i] for t in times[s]) for i in range(3)]
            print(f"| {s} | {med[0]:.2f} | {med[2]:.2f} | {med[1]:.2f} | {times[s][0][3]:,.0f} | {med[0] / ref[0]:.3f} | "
                  f"{med[2] / ref[2]:.3f} | {med[1] / ref[1]:.3f} |")
    print(f"\nload average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
