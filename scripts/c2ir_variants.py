"""Measure C2IR variants side by side from cached artifacts: IPM x normalisation x MGI x layer set x logit term.

Every dataset's features come from the feature cache (one forward pass per dataset, computed on
first use); each IPM's per-layer deviations are computed once, and the variants only recombine
columns, so hundreds of variants cost seconds. Prints a Markdown table sorted by mean AUROC,
with the baselines of the same run, and per-layer AUROCs as a diagnostic.

    python scripts/c2ir_variants.py experiment=cifar10_resnet20_cpu [--ipms mean_l2,mean_standardized] [--top 40]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import re
import sys
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from c2ir.config import config_dir, register_resolvers
from c2ir.detectors import build_detector
from c2ir.detectors.c2ir import combine, impression_scale
from c2ir.detectors.logits import LOGIT_SCORES
from c2ir.metrics import auroc
from c2ir.graph import resolve
from c2ir.stages.evaluate import build_detectors, passes
from c2ir.stages.features import FEATURES
from c2ir.stages.fit import fit_for
from c2ir.stages.job import cli_job
from c2ir.stages.weight_layers import WEIGHT_LAYERS

log = logging.getLogger("c2ir_variants")


def layer_subsets(layers: list[str]) -> dict[str, list[int]]:
    """Named layer subsets by position (works for any model whose layers follow stem/stage naming)."""
    idx = {n: i for i, n in enumerate(layers)}
    stages = sorted({m.group(1) for n in layers if (m := re.match(r"(layer\d+)\.", n))})
    subsets = {"all": list(range(len(layers))), "no_last": list(range(len(layers) - 1))}
    stem = [i for n, i in idx.items() if not re.match(r"layer\d+\.", n)]
    for s in stages:
        subsets[s] = [i for n, i in idx.items() if n.startswith(s + ".")]
    if stages:
        subsets["blocks"] = [i for i in range(len(layers)) if i not in stem]
        subsets["stage_ends"] = stem + [max(subsets[s]) for s in stages]
        subsets["no_last_stage"] = [i for i in range(len(layers)) if i not in subsets[stages[-1]]]
        if len(stages) >= 2:
            subsets["middle"] = subsets[stages[-2]] + [min(subsets[stages[-1]])]
    return subsets


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--ipms", default="mean_l2,mean_l1,mean_standardized,mmd_rbf,wasserstein")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_resolvers()
    t0 = time.time()
    rows, per_layer_rows, baselines = [], [], {}
    for ipm_name in args.ipms.split(","):
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[*args.overrides, f"ipm={ipm_name}",
                                               "detectors=[c2ir,energy,msp,maxlogit,odin,knn]"])
        job = cli_job(cfg)
        dets = build_detectors(job)
        fit = fit_for(job, list(dets.values()))
        det = build_detector("c2ir", {**cfg.detectors.c2ir, "logit_score": "none", "normalize": "none", "select_ipm": False}, ipm=ipm_name)
        det.fit(fit)
        bundles = {name: resolve(FEATURES, job, p).value for name, p in passes(job, dets).items()}
        id_name, oods = next(iter(bundles)), list(bundles)[1:]
        raw = {name: det.layer_deviations(b) for name, b in bundles.items()}
        raw_imp = det.layer_deviations(fit.impressions)
        layers = det.layers
        wrec = resolve(WEIGHT_LAYERS, job).artifact.json("weights.json")
        weights = {m: torch.tensor(w, dtype=torch.float64) for m, w in wrec["weights_by_method"].items()}
        logit_cache = {k: {n: fn(b["logits"]) for n, b in bundles.items()} for k, fn in LOGIT_SCORES.items()}
        logit_imp = {k: fn(fit.impressions["logits"]) for k, fn in LOGIT_SCORES.items()}
        if not baselines:
            for name in ("energy", "msp", "maxlogit", "knn"):
                d = build_detector(name, cfg.detectors[name]).fit(fit)
                baselines[name] = [100 * auroc(d.score(bundles[id_name]), d.score(bundles[o])) for o in oods]
        for li, lname in enumerate(layers):
            per_layer_rows.append((ipm_name, lname, [100 * auroc(raw[id_name][:, li].numpy(), raw[o][:, li].numpy())
                                                     for o in oods]))
        subsets = layer_subsets(layers)
        grid = itertools.product(subsets.items(), weights.items(), ("impression_z", "impression_std", "none"),
                                 (("none", 0.0), ("energy", 0.5), ("energy", 1.0), ("energy", 2.0), ("maxlogit", 1.0)))
        for (sname, cols), (mname, w_all), norm, (logit, lw) in grid:
            w = w_all[cols]
            w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1 / len(w))
            loc, spread = impression_scale(raw_imp[:, cols], norm)
            use_logit = logit != "none"

            def score(name: str) -> np.ndarray:
                return combine(raw[name][:, cols], loc, spread, w,
                               logit_cache[logit][name] if use_logit else None,
                               logit_imp[logit] if use_logit else None, lw).numpy()

            id_s = score(id_name)
            aucs = [100 * auroc(id_s, score(o)) for o in oods]
            rows.append({"ipm": ipm_name, "layers": sname, "mgi": mname, "normalize": norm,
                         "logit": f"{logit}x{lw:g}" if logit != "none" else "none", "aurocs": aucs,
                         "mean": float(np.mean(aucs))})
    rows.sort(key=lambda r: -r["mean"])
    oods_h = " | ".join(oods)
    print(f"\n{len(rows)} C2IR variants in {time.time() - t0:.0f} s; ID={id_name}, AUROC (%) per OOD set\n")
    print(f"| ipm | layers | mgi | normalize | logit term | {oods_h} | mean |")
    print("|" + "---|" * (6 + len(oods)))
    for name, aucs in baselines.items():
        print(f"| ({name}) | | | | | " + " | ".join(f"{a:.1f}" for a in aucs) + f" | {np.mean(aucs):.1f} |")
    for r in rows[: args.top]:
        print(f"| {r['ipm']} | {r['layers']} | {r['mgi']} | {r['normalize']} | {r['logit']} | "
              + " | ".join(f"{a:.1f}" for a in r["aurocs"]) + f" | {r['mean']:.1f} |")
    print("\nPer-layer deviation alone (AUROC %):\n")
    print(f"| ipm | layer | {oods_h} |")
    print("|" + "---|" * (2 + len(oods)))
    for ipm_name, lname, aucs in per_layer_rows:
        print(f"| {ipm_name} | {lname} | " + " | ".join(f"{a:.1f}" for a in aucs) + " |")
    best_by_ipm = {}
    for r in rows:
        best_by_ipm.setdefault(r["ipm"], r)
    print("\nBest variant per IPM:\n")
    for r in best_by_ipm.values():
        print(f"- {r['ipm']}: {r['layers']}, {r['mgi']}, {r['normalize']}, {r['logit']}: mean {r['mean']:.1f} "
              f"({', '.join(f'{a:.1f}' for a in r['aurocs'])})")


if __name__ == "__main__":
    main(sys.argv[1:])
