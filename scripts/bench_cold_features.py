"""Cold decode + features of the CIFAR-10 test split: two checkouts alternated, wall and CPU of each (issue 13).

Runs `scripts/cold_feature_pass.py` (the features stage as `c2ir evaluate experiment=cifar10_resnet20_cpu`
calls it for the ID test set) in a fresh process with a fresh cache root, alternating the former and the
streamed checkout twice, and prints the wall time and the CPU time (user + system of the process and its
reaped DataLoader workers) of each, with the load average before and after.

    python scripts/bench_cold_features.py --former /path/to/checkout-6c067d2 --streamed . [--work /tmp/cold] [OVERRIDE...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PASS = Path(__file__).resolve().with_name("cold_feature_pass.py")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--former", type=Path, required=True, help="checkout of the former code (e.g. commit 6c067d2)")
    p.add_argument("--streamed", type=Path, required=True, help="checkout of the streamed code")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_cold"), help="scratch folder for the cache roots")
    p.add_argument("--rounds", type=int, default=2)
    args, extra = p.parse_known_args()
    codes = {"former": args.former.resolve(), "streamed": args.streamed.resolve()}
    for rnd in range(1, args.rounds + 1):
        for label, code in codes.items():
            cache = args.work / f"cache-{label}-{rnd}"
            shutil.rmtree(cache, ignore_errors=True)
            la0 = open("/proc/loadavg").read().split()[:3]
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, str(PASS), str(cache), *extra], env={**os.environ, "PYTHONPATH": str(code)},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            la1 = open("/proc/loadavg").read().split()[:3]
            if os.waitstatus_to_exitcode(status):
                print(out[-3000:])
                raise SystemExit(f"{label} failed")
            last = [line for line in out.splitlines() if line.startswith("images")][-1]
            print(f"round {rnd} {label:9s}: wall {wall:6.1f} s, CPU {usage.ru_utime + usage.ru_stime:6.1f} s "
                  f"(user {usage.ru_utime:.1f}, sys {usage.ru_stime:.1f}); {last}; load {' '.join(la0)} -> {' '.join(la1)}",
                  flush=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
