"""Diagnostic (issue 21): the real ID TPR C2IR's data-free threshold would have if its reference were the *raw*
held-back impressions instead of the softened ones (docs/BENCHMARKS.md section 19).

For `c2ir` and `c2ir_paper` per seed: fit as `c2ir evaluate` does (the softened criterion chooses the variant),
then score the raw held-back half of each fold with the fit's chosen variant (the same two folds that give the
softened reference), and report the share of the real ID test set below the 95% quantile of the softened
reference (today's rule), of the raw one, and of both pooled. Not a rule of the tool: none of the three keeps
92-98% on every pair.

    python scripts/threshold_raw_reference.py cache_root=CACHE [experiment=cifar10_resnet20_cpu] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch
from fitted_setup import fitted_setup

from c2ir.config import register_resolvers
from c2ir.detectors.c2ir import RAW_REFERENCE

RULES = ("softened", "raw", "pooled")


def measure(overrides: list[str], tpr: float = 0.95) -> dict[str, dict[str, float]]:
    _, dets, fit, sets = fitted_setup(["detectors=[c2ir,c2ir_paper]", *overrides])
    real = sets[next(iter(sets))]
    weights = fit.layer_weights if fit.layer_weights is not None else torch.ones(len(fit.class_stats.layers))
    out = {}
    for name, det in dets.items():
        det.fit(fit)
        chosen = (det.ipm_used, det.combination_used, det.weight_used)
        det.criterion_reference, det.select_ipm = "raw", True   # makes the fold sets include the raw held-back half
        scored = det._fold_scores(det._fold_sets(fit), chosen[0], weights)
        ref = {r: np.concatenate([det._combined(rec, key, chosen[1], chosen[2]).numpy() for rec in scored])
               for r, key in (("softened", "reference"), ("raw", RAW_REFERENCE))}
        ref["pooled"] = np.concatenate([ref["softened"], ref["raw"]])
        scores = det.score(real)
        out[name] = {r: 100 * float(np.mean(scores <= np.quantile(ref[r], tpr))) for r in RULES}
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    register_resolvers()
    runs = [measure([*args.overrides, f"seed={s}"]) for s in args.seeds.split(",")]
    print("| detector | reference | real ID TPR (mean ± std) | per seed |\n|---|---|---|---|")
    for name in runs[0]:
        for r in RULES:
            v = [run[name][r] for run in runs]
            print(f"| {name} | {r} | {np.mean(v):.1f} ± {np.std(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
