"""How far the data-free threshold's real ID TPR is from its nominal value.

For every feature-based detector of a configuration: the threshold is the score that a share
`--tpr` of the impressions stays below (what `c2ir.C2IR.fit()` and `c2ir score` use, with no
data); the script reports the share of the real ID test set below it (the real TPR) and the
share of each OOD set below it (FPR at that threshold). Runs on the stages' cache.

    python scripts/threshold_tpr.py [--tpr 0.95] [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
from hydra import compose, initialize_config_dir

from c2ir.config import config_dir, register_resolvers
from c2ir.graph import resolve
from c2ir.stages.evaluate import build_detectors, passes
from c2ir.stages.features import FEATURES
from c2ir.stages.fit import fit_for, threshold_at
from c2ir.stages.job import cli_job

DETECTORS = "detectors=[c2ir,msp,maxlogit,energy,nmd,mahalanobis_imp,knn_imp,react_imp]"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tpr", type=float, default=0.95)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[DETECTORS, *args.overrides])
    job = cli_job(cfg)
    dets = build_detectors(job)
    fit = fit_for(job, list(dets.values()))
    sets = {name: resolve(FEATURES, job, p).value for name, p in passes(job, dets).items()}
    id_name, oods = next(iter(sets)), list(sets)[1:]
    print(f"nominal TPR {args.tpr:.2f} (threshold from {len(fit.impressions['logits'])} impressions); "
          f"ID set {id_name} ({len(sets[id_name]['logits'])} images)")
    print("| detector | real ID TPR | impression quantile for a real TPR of the nominal | "
          + " | ".join(f"FPR {o}" for o in oods) + " |")
    print("|---|---|---|" + "---|" * len(oods))
    for name, det in dets.items():
        det.fit(fit)
        threshold = threshold_at(det.score(fit.impressions), args.tpr)   # the data-free threshold (stages/fit.py)
        below = {s: float(np.mean(det.score(b) <= threshold)) for s, b in sets.items()}
        real = threshold_at(det.score(sets[id_name]), args.tpr)  # the threshold ID data would give
        q = float(np.mean(det.score(fit.impressions) <= real))
        print(f"| {name} | {100 * below[id_name]:.1f} | {q:.2f} | "
              + " | ".join(f"{100 * below[o]:.1f}" for o in oods) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
