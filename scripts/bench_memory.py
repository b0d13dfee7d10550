"""Peak memory of `c2ir evaluate` vs the number of images, and decoding throughput vs worker count.

Issue 13, section 1. Generates an ImageFolder of 224x224 JPEGs (10 classes), then
1. runs `c2ir evaluate` on 2,000 and on 8,000 of its images (data.max_test_samples) with a random-
   initialised torchvision model of 224-px input (checkpoint path, no download), a tiny synthesis and
   three detectors, from a warm upstream cache; prints the peak RSS of each and the ratio 8,000 / 2,000.
   Peak RSS: the largest single process (wait4's ru_maxrss, the main process) and the peak of the sum
   over the process tree (main + DataLoader workers) sampled every 50 ms.
   With --old PATH, the same two runs with the code checkout at PATH (e.g. /work/main) for comparison.
2. decodes --decode-n of the images through the loader with 1 and with 2 workers (no model), alternating
   (1, 2, 1, 2, ...) so both see the same machine load; prints images/s, the ratio 2 / 1, the CPU time
   per image and the cores the pass obtained (CPU / wall: on a machine busy with other work, 2 workers
   can only be faster if a second core is free).

    nice -n 19 python scripts/bench_memory.py --work /tmp/bench_memory [--old /work/main] [--threads 1]
        [--skip-decode | --skip-memory]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_memory")
REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int, classes: int = 10, size: int = 224) -> Path:
    """n JPEGs (smooth random content, ~15 KB each) in `classes` class folders under root/test (once)."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "test" / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BILINEAR)
        img.save(d / f"{i:05d}.jpg", quality=90)
    done.write_text(str(n))
    return root


def make_checkpoint(path: Path, arch: str, classes: int = 10) -> Path:
    import torch
    import torchvision

    if not path.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(arch, weights=None, num_classes=classes).state_dict(), path)
    return path


def tree_rss_kb(pid: int) -> int:
    """Sum of VmRSS (kB) of `pid` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run `cmd`; peak RSS of its largest process (wait4) and of its process tree (sampled)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_kb(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(out[-3000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return {"max_rss_mb": usage.ru_maxrss / 1024, "tree_peak_mb": peak[0] / 1024,
            "wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime}


def evaluate_cmd(args: argparse.Namespace, data: Path, ckpt: Path, n: int, new_code: bool) -> list[str]:
    cmd = [sys.executable, "-m", "c2ir", "evaluate", "data=imagefolder", f"data.root={data}", "data.num_classes=10",
           "data.image_size=224", "data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]",
           f"data.max_test_samples={n}", "model=torchvision", f"model.name={args.arch}", "model.weights=null",
           f"model.checkpoint={ckpt}", f"model.layer_sets={{default:[\"{args.layers}\"]}}",
           "ood=[gaussian_noise]", "ood.gaussian_noise.max_samples=200", "detectors=[msp,energy,c2ir]",
           "synth=fast", "synth.per_class=1", "synth.batch_size=10", "synth.iterations=2", "synth.warmup_iterations=0",
           f"batch_size={args.batch}", f"threads={args.threads}",
           f"cache_root={args.work / ('cache-new' if new_code else 'cache-old')}",
           f"hydra.run.dir={args.work / 'runs' / ('new' if new_code else 'old') / str(n)}"]
    if new_code:
        cmd.append(f"num_workers={args.workers}")
    return cmd


def memory(args: argparse.Namespace, data: Path, ckpt: Path) -> None:
    codes = [("new", str(REPO))] + ([("old", args.old)] if args.old else [])
    for label, code in codes:
        env = {**os.environ, "PYTHONPATH": code}
        # warm the upstream cache (synthesis, statistics, MGI weights, OOD features) on a few images
        run_measured(evaluate_cmd(args, data, ckpt, 20, label == "new"), env)
        res = {n: run_measured(evaluate_cmd(args, data, ckpt, n, label == "new"), env) for n in (args.small, args.large)}
        a, b = res[args.small], res[args.large]
        for n, r in res.items():
            print(f"[{label} code] evaluate on {n} images: peak RSS {r['max_rss_mb']:.0f} MB (largest process), "
                  f"{r['tree_peak_mb']:.0f} MB (process tree); {r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU")
        print(f"[{label} code] peak RSS ratio {args.large}/{args.small}: {b['max_rss_mb'] / a['max_rss_mb']:.3f} "
              f"(largest process), {b['tree_peak_mb'] / a['tree_peak_mb']:.3f} (process tree)")


def throughput(args: argparse.Namespace, data: Path) -> None:
    from omegaconf import OmegaConf

    from c2ir.data import BatchStream, load_id

    cfg = OmegaConf.create({"name": "bench", "source": "imagefolder", "root": str(data), "num_classes": 10,
                            "channels": 3, "image_size": 224, "seed": 0, "test_split": "test",
                            "max_test_samples": args.decode_n})
    ds = load_id(cfg, "test")
    times: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for w in (1, 2):
            start, c0 = time.perf_counter(), cpu_seconds()
            n = sum(len(b.images) for b in BatchStream(ds, args.batch, num_workers=w))
            times[w].append(time.perf_counter() - start)
            cpu[w].append(cpu_seconds() - c0)
            assert n == len(ds)
    for w, ts in times.items():
        print(f"decode {len(ds)} images with {w} worker(s): best {len(ds) / min(ts):.0f} img/s, "
              f"median {len(ds) / float(np.median(ts)):.0f} img/s ({', '.join(f'{t:.1f}' for t in ts)} s); "
              f"CPU {1000 * float(np.median(cpu[w])) / len(ds):.1f} ms per image, "
              f"cores obtained (CPU / wall) {float(np.median([c / t for c, t in zip(cpu[w], ts)])):.2f}")
    print(f"decode speed-up 2 workers / 1 worker: {min(times[1]) / min(times[2]):.2f}x (best), "
          f"{float(np.median(times[1])) / float(np.median(times[2])):.2f}x (median)")


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (the DataLoader's workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/c2ir-bench-memory"))
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=8000)
    p.add_argument("--arch", default="mobilenet_v3_small", help="torchvision classifier (random weights)")
    p.add_argument("--layers", default=r"features.(3|6|9|12)", help="layer regex(es) for model.layer_sets.default")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--old", default=None, help="checkout of the former code to measure the same runs with")
    p.add_argument("--decode-n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-decode", action="store_true", help="only the peak-RSS runs")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    with open("/proc/loadavg") as f:
        print(f"load average at start: {' '.join(f.read().split()[:3])}; CPUs: {os.cpu_count()}")
    data = make_folder(args.work / "data", args.large)
    ckpt = make_checkpoint(args.work / f"{args.arch}-random.pth", args.arch)
    if not args.skip_decode:
        throughput(args, data)
    if not args.skip_memory:
        memory(args, data, ckpt)
    with open("/proc/loadavg") as f:
        print(f"load average at end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
