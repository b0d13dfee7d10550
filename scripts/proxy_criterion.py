"""C2IR's proxy criterion against the softened and the raw held-back impressions, beside each candidate's test AUROC.

The fit chooses C2IR's IPM and Energy weight by the mean AUROC of held-back impressions against three proxy-outlier
sets made from them (`c2ir.detectors.c2ir`). The held-back side is softened by default (the threshold's pseudo-real
reference), so two of the proxies, which are not, differ from it by the blur as well (docs/BENCHMARKS.md section
18). For every candidate (ipm, weight) this prints the criterion with `criterion_reference=softened` and `=raw`, the
deviations-only AUROC against each proxy, which candidate each criterion picks (at the run's `blurred_tolerance`),
and the candidate's real test mean AUROC over the run's OOD sets. The test column is a DIAGNOSTIC of the criterion (it looks at test data): nothing
here chooses a default. With `--tolerances`, it also prints which candidate each `blurred_tolerance` would choose
(the softened criterion's best among the candidates within it, `c2ir.detectors.c2ir.within_tolerance`) and that
candidate's test mean AUROC / FPR95 (docs/BENCHMARKS.md section 20). Runs on the stages' cache (a missing artifact is
computed).

    python scripts/proxy_criterion.py seed=0 cache_root=CACHE threads=2
    python scripts/proxy_criterion.py experiment=cifar10_resnet20_cpu seed=0 cache_root=CACHE --json out.json
    python scripts/proxy_criterion.py seed=0 cache_root=CACHE --tolerances 0.5,1,2,3,5,10,none
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
from fitted_setup import fitted_setup

from c2ir.config import register_resolvers
from c2ir.detectors.c2ir import CRITERION_REFERENCES, C2IR, GUARD_PROXY, select_within_tolerance
from c2ir.metrics import auroc, fpr_at_tpr


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
        row["test_auroc"] = {o: 100 * auroc(sc[id_name], sc[o]) for o in oods}
        row["test_mean_auroc"] = float(np.mean(list(row["test_auroc"].values())))
        row["test_mean_fpr95"] = float(np.mean([100 * fpr_at_tpr(sc[id_name], sc[o]) for o in oods]))
    test = [r["test_mean_auroc"] for r in rows.values()]
    rho = {ref: spearman([r[f"criterion_{ref}"] for r in rows.values()], test) for ref in CRITERION_REFERENCES}
    return {"rows": rows, "chosen": chosen, "rho": rho, "oods": oods}


def tolerance_picks(run: dict, tolerances: list[float | None]) -> dict[str, str]:
    """Per `blurred_tolerance`, the candidate the softened criterion picks among those within it (the fit's rule,
    from the rows' own per-proxy AUROCs)."""
    rows = {(r["ipm"], r["combination"], r["weight"]): r for r in run["rows"].values()}
    guard = {v: r["proxies_softened"][GUARD_PROXY] for v, r in rows.items()}
    alone = {v[0]: g for v, g in guard.items() if v[1:] == ("sum", 0.0)}
    order = list(dict.fromkeys(v[0] for v in rows))
    if set(alone) != set(order):
        raise SystemExit("proxy_criterion.py: --tolerances needs the weight-0 candidates (select_logit_weight=true)")
    criteria = {v: r["criterion_softened"] for v, r in rows.items()}
    return {"none" if tol is None else f"{tol:g}": _name(*select_within_tolerance(criteria, guard, alone, tol, order)[0])
            for tol in tolerances}


def _tolerance(text: str) -> float | None:
    """One --tolerances value: a number >= 0, or none."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise SystemExit(f"proxy_criterion.py: --tolerances value {text!r}; give numbers >= 0 or none, e.g. 0.5,1,2,none")
    return value


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
    out = [*lines, "", f"{picks}; best on test: {best} ({run['rows'][best]['test_mean_auroc']:.1f}); "
           f"OOD sets: {', '.join(run['oods'])}"]
    if run.get("tolerance_picks"):
        out += ["", "| blurred_tolerance | pick | test mean AUROC / FPR95 (diagnostic) |", "|---|---|---|"]
        out += [f"| {t} | {c} | {run['rows'][c]['test_mean_auroc']:.1f} / {run['rows'][c]['test_mean_fpr95']:.1f} |"
                for t, c in run["tolerance_picks"].items()]
    return "\n".join(out)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None, help="also write the values here")
    parser.add_argument("--tolerances", default="", help="comma-separated blurred_tolerance values to compare "
                        "(`none`: no limit), e.g. 0.5,1,2,3,5,10,none")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    register_resolvers()
    run = measure(args.overrides)
    if args.tolerances:
        run["tolerance_picks"] = tolerance_picks(run, [_tolerance(t) for t in args.tolerances.split(",")])
    print(table(run))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(run, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
