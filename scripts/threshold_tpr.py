"""How far the data-free threshold's real ID TPR is from its nominal value.

For every detector of a configuration: the data-free threshold is set by the rule that `predict()`
and `c2ir score` use (`c2ir.threshold.data_free_threshold`: for C2IR, softened impressions held back
from the statistics, cross-fitted, for `c2ir` at its shifted quantile; for the others, softened impressions); the script reports the
rule, the share of the real ID test set below the threshold (the real TPR), the share of each OOD
set below it (FPR at that threshold), the quantile of the rule's reference set that a real TPR of
`--tpr` would have needed (the share of the reference below the real ID set's `--tpr` quantile: 95 when
the reference scores like real data), the reference quantiles that would keep 92-98% of real ID per run (what
chose C2IR's `reference_shift`: docs/BENCHMARKS.md section 20), and, for comparison, the real TPR of the former in-sample rule
(the score that a share `--tpr` of the impressions themselves stays below). With `--seeds` it repeats
this per seed (each seed its own impressions, and for digits its own model) and prints mean +- std.
Runs on the stages' cache (a missing artifact is computed).

    python scripts/threshold_tpr.py [--tpr 0.95] [--detectors c2ir,c2ir_paper,energy] [hydra overrides ...]
    python scripts/threshold_tpr.py --seeds 0,1,2 --json out.json experiment=cifar10_resnet20_cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
from fitted_setup import fitted_setup

from c2ir.config import register_resolvers
from c2ir.graph import Step
from c2ir.proxies import softened
from c2ir.stages.fit import FITTED, fitted_threshold, pixel_scorer
from c2ir.threshold import quantile_threshold

BAND = (0.92, 0.98)   # issue 21's range of real ID TPR: which reference quantiles would keep it
DETECTORS = "c2ir,c2ir_paper,msp,maxlogit,energy,nmd,mahalanobis_imp,mahalanobis_multi_imp,knn_imp,vim_imp"


def measure(overrides: list[str], tpr: float) -> dict:
    """Per detector: rule, real ID TPR, expected interval, the former rule's real TPR, FPR per OOD set (%)."""
    job, dets, fit, sets = fitted_setup(overrides)
    id_name, oods = next(iter(sets)), list(sets)[1:]
    step = Step(job, FITTED, None, "", {}, {})   # the threshold rule of `c2ir score` and the API (stages/fit.py)
    out = {"id_set": id_name, "oods": oods, "impressions": int(len(fit.impressions["logits"])), "detectors": {}}
    for name, det in dets.items():
        det.fit(fit)
        scores = {s: det.score(b) for s, b in sets.items()}
        thr = fitted_threshold(step, det, fit, tpr)
        in_sample = det.score(fit.impressions)
        old = quantile_threshold(in_sample, tpr, "impressions").value
        below = {s: 100 * float(np.mean(v <= thr.value)) for s, v in scores.items()}
        score_pixels, images = pixel_scorer(step, det, fit)
        ref = reference_scores(det, thr.rule, score_pixels, images, in_sample)
        real_q = float(np.quantile(scores[id_name], tpr))   # the threshold a real `tpr` would need
        band = [100 * float(np.mean(ref <= np.quantile(scores[id_name], q))) for q in BAND]
        out["detectors"][name] = {"rule": thr.rule, "real_tpr": below[id_name],
                                  "reference_share_for_real_tpr": 100 * float(np.mean(ref <= real_q)),
                                  "reference_share_for_real_band": band,
                                  "expected": [100 * thr.expected[0], 100 * thr.expected[1]],
                                  "real_tpr_in_sample_rule": 100 * float(np.mean(scores[id_name] <= old)),
                                  "fpr": {o: below[o] for o in oods}}
    return out


def reference_scores(det, rule: str, score_pixels, images, in_sample: np.ndarray) -> np.ndarray:
    """The scores the rule took its quantile of (to say which quantile a real `tpr` would have needed)."""
    if rule in ("pseudo_real_cross_fitted", "pseudo_real_shifted"):
        return np.asarray(det.reference)
    return score_pixels(softened(images)) if rule == "pseudo_real" else in_sample


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.1f}" if len(values) == 1 else f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def table(runs: list[dict]) -> str:
    oods = runs[0]["oods"]
    lines = [f"nominal TPR {runs[0]['tpr']:.2f}; ID set {runs[0]['id_set']}; {runs[0]['impressions']} impressions; "
             f"{len(runs)} run(s)" + (" (mean ± std over seeds)" if len(runs) > 1 else ""), "",
             "| detector | rule | real ID TPR | expected | reference quantile a real TPR of it needs | "
             "reference quantiles that keep 92-98% of real ID, per run | real ID TPR, former in-sample rule | "
             + " | ".join(f"FPR {o}" for o in oods) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(oods)]
    for name, first in runs[0]["detectors"].items():
        per = [r["detectors"][name] for r in runs]
        lo, hi = first["expected"]
        lines.append(f"| {name} | {first['rule']} | {_ms([p['real_tpr'] for p in per])} | {lo:.0f}-{hi:.0f} | "
                     f"{_ms([p['reference_share_for_real_tpr'] for p in per])} | "
                     + "; ".join(f"{p['reference_share_for_real_band'][0]:.1f}-{p['reference_share_for_real_band'][1]:.1f}"
                                 for p in per) + " | "
                     f"{_ms([p['real_tpr_in_sample_rule'] for p in per])} | "
                     + " | ".join(_ms([p["fpr"][o] for p in per]) for o in oods) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tpr", type=float, default=0.95)
    parser.add_argument("--detectors", default=DETECTORS, help="comma list of feature-based detector configs")
    parser.add_argument("--seeds", default=None, help="comma list: one run per seed (seed=<s>), then mean ± std")
    parser.add_argument("--json", default=None, help="also write every run's values here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    register_resolvers()
    base = [f"detectors=[{args.detectors}]", *args.overrides]
    seeds = [s for s in (args.seeds or "").split(",") if s]
    runs = [{**measure([*base, f"seed={s}"] if seeds else base, args.tpr), "tpr": args.tpr, "seed": s}
            for s in (seeds or [None])]
    print(table(runs))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(runs, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
