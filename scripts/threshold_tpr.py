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
from c2ir.stages.common import RunContext
from c2ir.stages.evaluate import Evaluation

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
    ctx = RunContext(cfg)
    ev = Evaluation(ctx)
    fit = ev.fit_context()
    oods = [s for s in ev.sets if s != ev.id_name]
    print(f"nominal TPR {args.tpr:.2f} (threshold from {len(fit.impressions['logits'])} impressions); "
          f"ID set {ev.id_name} ({len(ev.sets[ev.id_name][1]['logits'])} images)")
    print("| detector | real ID TPR | impression quantile for a real TPR of the nominal | "
          + " | ".join(f"FPR {o}" for o in oods) + " |")
    print("|---|---|---|" + "---|" * len(oods))
    for name, det in ev.detectors.items():
        det.fit(fit)
        threshold = float(np.quantile(det.score(fit.impressions), args.tpr))
        below = {s: float(np.mean(det.score(b) <= threshold)) for s, (_, b) in ev.sets.items()}
        real = float(np.quantile(det.score(ev.sets[ev.id_name][1]), args.tpr))  # the threshold ID data would give
        q = float(np.mean(det.score(fit.impressions) <= real))
        print(f"| {name} | {100 * below[ev.id_name]:.1f} | {q:.2f} | "
              + " | ".join(f"{100 * below[o]:.1f}" for o in oods) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
