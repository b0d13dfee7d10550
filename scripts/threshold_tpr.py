"""How far the data-free threshold's real ID TPR is from its nominal value.

For every detector of a configuration: the data-free threshold is set by the rule that `predict()`
and `c2ir score` use (`c2ir.threshold.data_free_threshold`: for C2IR, softened impressions held back
from the statistics, cross-fitted; for the others, softened impressions); the script reports the
rule, the share of the real ID test set below the threshold (the real TPR), the share of each OOD
set below it (FPR at that threshold), and, for comparison, the real TPR of the former in-sample rule
(the score that a share `--tpr` of the impressions themselves stays below). Runs on the stages' cache.

    python scripts/threshold_tpr.py [--tpr 0.95] [--detectors c2ir,c2ir_paper,energy] [hydra overrides ...]
    python scripts/threshold_tpr.py --json out.json experiment=cifar10_resnet20_cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
from hydra import compose, initialize_config_dir

from c2ir.config import config_dir, register_resolvers
from c2ir.stages.common import RunContext
from c2ir.stages.evaluate import Evaluation
from c2ir.stages.score import score_images
from c2ir.threshold import data_free_threshold, quantile_threshold

DETECTORS = "c2ir,c2ir_paper,msp,maxlogit,energy,nmd,mahalanobis_imp,mahalanobis_multi_imp,knn_imp,vim_imp"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tpr", type=float, default=0.95)
    parser.add_argument("--detectors", default=DETECTORS, help="comma list of feature-based detector configs")
    parser.add_argument("--json", default=None, help="also write the table's values here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"detectors=[{args.detectors}]", *args.overrides])
    ctx = RunContext(cfg)
    ev = Evaluation(ctx)
    fit = ev.fit_context()
    if fit.impression_images is None:
        from c2ir.stages import synthesize
        fit.impression_images = synthesize.load(synthesize.ensure(ctx))[0]
    oods = [s for s in ev.sets if s != ev.id_name]
    print(f"nominal TPR {args.tpr:.2f} ({len(fit.impressions['logits'])} impressions); "
          f"ID set {ev.id_name} ({len(ev.sets[ev.id_name][1]['logits'])} images)")
    print("| detector | rule | real ID TPR | expected | real ID TPR, former in-sample rule | "
          + " | ".join(f"FPR {o}" for o in oods) + " |")
    print("|---|---|---|---|---|" + "---|" * len(oods))
    out = {}
    for name, det in ev.detectors.items():
        det.fit(fit)
        scores = {s: det.score(b) for s, (_, b) in ev.sets.items()}
        thr = data_free_threshold(det, args.tpr, lambda pixels: score_images(ctx, det, pixels)[0],
                                  fit.impression_images, lambda: det.score(fit.impressions))
        old = quantile_threshold(det.score(fit.impressions), args.tpr, "impressions").value
        below = {s: 100 * float(np.mean(v <= thr.value)) for s, v in scores.items()}
        old_tpr = 100 * float(np.mean(scores[ev.id_name] <= old))
        lo, hi = thr.expected
        out[name] = {"rule": thr.rule, "real_tpr": below[ev.id_name], "expected": [100 * lo, 100 * hi],
                     "real_tpr_in_sample_rule": old_tpr, "fpr": {o: below[o] for o in oods}}
        print(f"| {name} | {thr.rule} | {below[ev.id_name]:.1f} | {100 * lo:.0f}-{100 * hi:.0f} | {old_tpr:.1f} | "
              + " | ".join(f"{below[o]:.1f}" for o in oods) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"id_set": ev.id_name, "oods": oods, "tpr": args.tpr, "detectors": out}, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
