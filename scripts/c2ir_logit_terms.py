"""Other logit terms inside C2IR, and the per-input spatial spread, per OOD set (a DIAGNOSTIC: it looks at test data).

Issue 21 asks for `c2ir` within 1 point of the best other data-free detector on every OOD set; on the CIFAR nets it
misses only TIN resize, where ODIN (ResNet-20) and `nci_imp` (ResNet-32/-44) lead and C2IR's deviations alone sit at
chance. This prints, per OOD set, the test AUROC of C2IR's deviations (`mean_standardized` and `mahalanobis`, the
candidates of its IPM choice) plus each candidate term at fixed weights, after z-scoring the term on the impressions
as C2IR does (`c2ir.detectors.c2ir.combine`):

- `energy` (C2IR's term), `maxlogit`, `msp`, `energy_t10` (Energy at temperature 10): `c2ir.detectors.logits`;
- `nci`: NCI's score (Liu & Qin, CVPR 2025; `c2ir.detectors.nci.nci_score`, mu the impressions' mean feature), the
  detector that leads TIN resize on the ResNet-32 and -44; `l1`: its L1-norm part alone.

With spatial vectors in the feature pass (run it with `ipm=sliced_wasserstein`, which needs them), it also scores
the spread of each input's own feature map (per channel, the log std over the 4 x 4 grid) against the impressions of
its predicted class (the "per-input spatial statistics" direction of issue 21), and the same statistic on the grid
means for comparison. Nothing here chooses a default.

    python scripts/c2ir_logit_terms.py experiment=cifar10_resnet20_cpu seed=0 cache_root=CACHE [--json OUT]
    python scripts/c2ir_logit_terms.py experiment=cifar10_resnet20_cpu seed=0 cache_root=CACHE ipm=sliced_wasserstein
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from fitted_setup import fitted_setup

from c2ir.config import register_resolvers
from c2ir.detectors import build_detector
from c2ir.detectors.c2ir import C2IR
from c2ir.graph import plain
from c2ir.detectors.head import head_params
from c2ir.detectors.logits import energy, maxlogit, msp
from c2ir.detectors.nci import nci_score
from c2ir.metrics import auroc

WEIGHTS = (1, 2, 4, 8, 16)
IPMS = ("mean_standardized", "mahalanobis")


def per_set(scores: dict[str, Any], id_name: str, oods: list[str]) -> dict[str, float]:
    """Test AUROC (%) of every OOD set against the ID test set; scores are tensors or arrays."""
    return {o: 100 * auroc(np.asarray(scores[id_name]), np.asarray(scores[o])) for o in oods}


def terms(fit) -> dict[str, Callable]:
    weight, bias = head_params(fit, "nci")
    mu = fit.impressions["penultimate"].double().mean(0)
    return {"energy": lambda f: energy(f["logits"]), "maxlogit": lambda f: maxlogit(f["logits"]),
            "msp": lambda f: msp(f["logits"]), "energy_t10": lambda f: energy(f["logits"], 10.0),
            "nci": lambda f: nci_score(f["penultimate"], weight, bias, mu, 1e-4),
            "l1": lambda f: -f["penultimate"].double().abs().sum(1)}


def spread_scores(fit, sets: dict, statistic: str = "log_std") -> dict[str, torch.Tensor] | None:
    """Mean over layers of the impressions-normalised mean squared z of a per-channel statistic of the input's own
    grid: `log_std` (its spatial spread) or `mean` (the grid mean, for comparison with the channel means)."""
    imp = fit.impressions
    layers = [k.removeprefix("spatial/") for k in imp.keys() if k.startswith("spatial/")]
    if not layers or any(f"spatial/{layers[0]}" not in b.keys() for b in sets.values()):
        return None
    labels = imp["labels"].long()
    classes = int(labels.max()) + 1
    total = {n: torch.zeros(len(b["logits"]), dtype=torch.float64) for n, b in sets.items()}
    for layer in layers:
        def stat(b):
            grid = b[f"spatial/{layer}"].float()
            return grid.std(dim=1).clamp_min(1e-6).log() if statistic == "log_std" else grid.mean(dim=1)
        f_imp = stat(imp)
        mean = torch.stack([f_imp[labels == k].mean(0) for k in range(classes)])
        std = torch.stack([f_imp[labels == k].std(0) for k in range(classes)]).clamp_min(1e-6)

        def dev(b):
            pred = b["logits"].argmax(1)
            return (((stat(b) - mean[pred]) / std[pred]) ** 2).mean(1).double()
        ref = dev(imp)
        for n, b in sets.items():
            total[n] += (dev(b) - ref.mean()) / ref.std().clamp_min(1e-12)
    return {n: t / len(layers) for n, t in total.items()}


def measure(overrides: list[str]) -> dict:
    job, _, fit, sets = fitted_setup(["detectors=[c2ir]", *overrides])
    names = list(sets)
    id_name, oods = names[0], names[1:]
    # the configured C2IR at the default IPM (not the built one's read-back flags: a non-pooled ipm= turns its
    # selections off), so `default` is the default detector even in the ipm=sliced_wasserstein run
    default = build_detector("c2ir", {**plain(job.cfg.detectors.c2ir), "ipm": "mean_standardized"}).fit(fit)
    params = default.params
    out = {"chosen": [default.ipm_used, default.weight_used, default.combination_used],
           "default": per_set({n: default.score(sets[n]) for n in names}, id_name, oods)}
    zs = {}
    for t, fn in terms(fit).items():
        ref = fn(fit.impressions)
        zs[t] = {n: (fn(sets[n]) - ref.mean()) / ref.std().clamp_min(1e-12) for n in names}
        out[f"{t} alone"] = per_set(zs[t], id_name, oods)
    for ipm in IPMS:
        dev = C2IR("c2ir", **{**params, "logit_score": "none", "ipm": ipm, "select_ipm": False}).fit(fit)
        d = {n: torch.as_tensor(np.asarray(dev.score(sets[n]))).double() for n in names}
        out[f"{ipm} alone"] = per_set(d, id_name, oods)
        for t, z in zs.items():
            for w in WEIGHTS:
                out[f"{ipm} + {t} x{w}"] = per_set({n: d[n] + w * z[n] for n in names}, id_name, oods)
    for statistic, label in (("log_std", "spread"), ("mean", "grid means")):
        extra = spread_scores(fit, sets, statistic)
        if extra is None:
            break
        out[f"{label} alone"] = per_set(extra, id_name, oods)
        for w in (0.5, 1, 2):
            out[f"energy x4 + {label} x{w}"] = per_set({n: 4 * zs["energy"][n] + w * extra[n] for n in names},
                                                      id_name, oods)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write the values here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING)
    register_resolvers()
    run = measure(args.overrides)
    chosen = run.pop("chosen")
    sets = list(run["default"])
    print(f"c2ir chose {chosen[0]}, {chosen[2]}, logit weight {chosen[1]:g}")
    print("| score | " + " | ".join(sets) + " | mean |")
    print("|---|" + "---|" * (len(sets) + 1))
    for name, values in run.items():
        v = list(values.values())
        print(f"| {name} | " + " | ".join(f"{x:.1f}" for x in v) + f" | {np.mean(v):.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"chosen": chosen, **run}, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
