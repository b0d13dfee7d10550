"""C2IR's proxy criterion against the softened and the raw held-back impressions, beside each candidate's test AUROC.

The fit chooses C2IR's IPM and Energy weight by the mean AUROC of held-back impressions against three proxy-outlier
sets made from them (`c2ir.detectors.c2ir`). The held-back side is softened by default (the threshold's pseudo-real
reference), so two of the proxies, which are not, differ from it by the blur as well (docs/BENCHMARKS.md section
18). For every candidate (ipm, weight) this prints the criterion with `criterion_reference=softened` and `=raw`, the
deviations-only AUROC against each proxy, which candidate each criterion picks, and the candidate's real test mean
AUROC over the run's OOD sets. The test column is a DIAGNOSTIC of the criterion (it looks at test data): nothing
here chooses a default. Runs on the stages' cache (a missing artifact is computed).

    python scripts/proxy_criterion.py seed=0 cache_root=CACHE threads=2
    python scripts/proxy_criterion.py experiment=cifar10_resnet20_cpu seed=0 cache_root=CACHE --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
from fitted_setup import fitted_setup

from c2ir.config import register_resolvers
from c2ir.detectors.c2ir import CRITERION_REFERENCES, C2IR
from c2ir.metrics import auroc


def measure(overrides: list[str]) -> dict:
    _, dets, fit, sets = fitted_setup(["detectors=[c2ir]", *overrides])
    id_name, oods = next(iter(sets)), list(sets)[1:]
    params = {k: v for k, v in dets["c2ir"].params.items() if k != "criterion_reference"}   # the run's own C2IR
    rows: dict[str, dict] = {}
    chosen = {}
    for ref in CRITERION_REFERENCES:
        det = C2IR("c2ir", **params, criterion_reference=ref)
        parts = det.proxy_criteria(fit, per_proxy=True)
        det.fit(fit)
        chosen[ref] = _name(det.ipm_used, det.combination_used, det.weight_used)
        for (ipm, combination, w), per in parts.items():
            row = rows.setdefault(_name(ipm, combination, w), {"ipm": ipm, "combination": combination, "weight": w})
            row[f"criterion_{ref}"] = float(np.mean(list(per.values())))
            row[f"proxies_{ref}"] = per
    for row in rows.values():   # the diagnostic: each candidate fitted on all impressions, scored on the test sets
        d = C2IR("c2ir", **{**params, "ipm": row["ipm"], "combination": row["combination"], "logit_weight": row["weight"],
                            "select_logit_weight": False, "select_ipm": False, "select_combination": False}).fit(fit)
        sc = {n: d.score(b) for n, b in sets.items()}
        row["test_mean_auroc"] = float(np.mean([100 * auroc(sc[id_name], sc[o]) for o in oods]))
    test = [r["test_mean_auroc"] for r in rows.values()]
    rho = {ref: spearman([r[f"criterion_{ref}"] for r in rows.values()], test) for ref in CRITERION_REFERENCES}
    return {"rows": rows, "chosen": chosen, "rho": rho, "oods": oods}


def _name(ipm: str, combination: str, weight: float) -> str:
    return f"{ipm}{'' if combination == 'sum' else f' ({combination})'} x{weight:g}"


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties; NaN when either side is constant)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def table(run: dict) -> str:
    refs = CRITERION_REFERENCES
    lines = ["| candidate | " + " | ".join(f"criterion, {r}" for r in refs) + " | "
             + " | ".join(f"deviations-only per proxy, {r}" for r in refs) + " | test mean AUROC (diagnostic) |",
             "|---|" + "---|" * (2 * len(refs) + 1)]
    for name, row in run["rows"].items():
        per = [", ".join(f"{p} {v:.1f}" for p, v in row[f"proxies_{r}"].items()) if row["weight"] == 0 else ""
               for r in refs]
        lines.append(f"| {name} | " + " | ".join(f"{row[f'criterion_{r}']:.1f}" for r in refs) + " | "
                     + " | ".join(per) + f" | {row['test_mean_auroc']:.1f} |")
    picks = "; ".join(f"{r} picks {c} (test {run['rows'][c]['test_mean_auroc']:.1f}; rank correlation of the "
                      f"criterion with the test column {run['rho'][r]:+.2f})" for r, c in run["chosen"].items())
    best = max(run["rows"], key=lambda k: run["rows"][k]["test_mean_auroc"])
    return "\n".join([*lines, "", f"{picks}; best on test: {best} ({run['rows'][best]['test_mean_auroc']:.1f}); "
                      f"OOD sets: {', '.join(run['oods'])}"])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None, help="also write the values here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    register_resolvers()
    run = measure(args.overrides)
    print(table(run))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(run, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
