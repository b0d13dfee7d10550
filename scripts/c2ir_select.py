"""Data-free selection of C2IR's combination (issue 14, part 3): proxy outliers vs held-back impressions.

No real OOD data and no real ID data is used to *select*. The impressions of one run are split per
class into two folds; each fold in turn provides the class statistics and the impression scale, and
the other fold is the held-back "ID"; proxy outliers are made from the held-back impressions only:

  - `patch_permuted`: the image cut into a 4x4 grid of patches, patches shuffled (local statistics
    kept, object layout destroyed);
  - `blurred`: Gaussian blur with sigma = image_size / 16 (fine texture removed);
  - `mixed`: the pixel average of two impressions of different target classes.

Criterion of a variant = mean AUROC (held-back impressions vs each proxy set), averaged over the two
folds. The script prints, per variant, the criterion next to the real test AUROC of the same variant
fitted on all impressions (reported only to judge the criterion, never used by it), the variant the
criterion picks, and the rank correlation of criterion and test mean.

    python scripts/c2ir_select.py experiment=cifar10_resnet20_cpu layer_set=all seed=0 cache_root=/tmp/h14/cache_resnet20
    python scripts/c2ir_select.py layer_set=default seed=0 cache_root=/tmp/h14/cache_digits --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from c2ir.config import config_dir, register_resolvers
from c2ir.detectors import build_detector
from c2ir.detectors.c2ir import LOGIT_WEIGHT_GRID, combine, impression_scale
from c2ir.detectors.logits import LOGIT_SCORES
from c2ir.extraction import extract_features
from c2ir.metrics import auroc
from c2ir.proxies import blurred, folds, mixed, patch_permuted
from c2ir.graph import resolve
from c2ir.stages.evaluate import build_detectors, passes
from c2ir.stages.features import FEATURES
from c2ir.stages.fit import fit_for
from c2ir.stages.job import cli_job, normalizer
from c2ir.stages.synthesize import SYNTHESIZE
from c2ir.stages.train import classifier, head
from c2ir.stages.weight_layers import WEIGHT_LAYERS
from c2ir.stats import compute_class_stats

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from c2ir_variants import layer_subsets  # noqa: E402

log = logging.getLogger("c2ir_select")


def take(bundle: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx] for k, v in bundle.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", default=None, help="write every variant's criterion and test AUROCs here")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_resolvers()
    t0 = time.time()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*args.overrides, "detectors=[c2ir,energy]"])
    job = cli_job(cfg)
    dets = build_detectors(job)
    fit = fit_for(job, list(dets.values()))
    k = int(cfg.data.num_classes)
    impressions = resolve(SYNTHESIZE, job).value
    images, targets = impressions.images, impressions.targets
    imp = fit.impressions
    bundles = {name: resolve(FEATURES, job, p).value for name, p in passes(job, dets).items()}
    id_name, oods = next(iter(bundles)), list(bundles)[1:]
    weights = {m: torch.tensor(w, dtype=torch.float64)
               for m, w in resolve(WEIGHT_LAYERS, job).artifact.json("weights.json")["weights_by_method"].items()}

    def detector(stats, cw: str):
        det = build_detector("c2ir", {"type": "c2ir", "logit_score": "none", "normalize": "none", "class_weighting": cw})
        det._setup(stats, torch.ones(len(stats.layers)))
        det._fitted = True
        return det

    # per class weighting: raw deviations of the test sets (stats of all impressions) and of the fold sets
    test_raw, fold_raw = {}, {}
    proxies_per_fold = []
    for f, (a, b) in enumerate([folds(targets), folds(targets)[::-1]]):
        pb = {"held_back": take(imp, b)}
        for pname, pimg in (("patch_permuted", patch_permuted(images[b], seed=f)), ("blurred", blurred(images[b])),
                            ("mixed", mixed(images[b], targets[b], seed=f))):
            pb[pname] = extract_features(classifier(job), pimg, normalizer(job), job.layers, head(job),
                                         batch_size=job.batch_size, device=job.device, desc=pname)
        proxies_per_fold.append((a, pb))
    for cw in ("argmax", "posterior"):
        det = detector(fit.class_stats, cw)
        test_raw[cw] = {n: det.layer_deviations(bd) for n, bd in bundles.items()}
        test_raw[cw]["_imp"] = det.layer_deviations(imp)
        for f, (a, pb) in enumerate(proxies_per_fold):
            stats_a = compute_class_stats(take(imp, a), targets[a], job.layers, k, 0, job.seed)
            det_a = detector(stats_a, cw)
            fold_raw[cw, f] = {n: det_a.layer_deviations(bd) for n, bd in pb.items()}
            fold_raw[cw, f]["_imp"] = det_a.layer_deviations(take(imp, a))
    logit = LOGIT_SCORES["energy"]
    subsets = layer_subsets(job.layers)
    rows = []
    grid = itertools.product(subsets.items(), weights.items(), ("impression_z",),  # impression_std ranks identically (a constant shift)
                             LOGIT_WEIGHT_GRID, ("argmax", "posterior"))
    for (sname, cols), (mname, w_all), norm, lw, cw in grid:
        w = w_all[cols]
        w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1 / len(w))

        def scores(raw: dict, fit_imp: dict, sets: dict) -> dict:
            loc, spread = impression_scale(raw["_imp"][:, cols], norm)
            li = logit(fit_imp["logits"])
            return {n: combine(raw[n][:, cols], loc, spread, w, logit(bd["logits"]), li, lw).numpy()
                    for n, bd in sets.items()}

        crit = []
        for f, (a, pb) in enumerate(proxies_per_fold):
            s = scores(fold_raw[cw, f], take(imp, a), pb)
            crit.append([100 * auroc(s["held_back"], s[p]) for p in ("patch_permuted", "blurred", "mixed")])
        s = scores(test_raw[cw], imp, bundles)
        test = [100 * auroc(s[id_name], s[o]) for o in oods]
        c = np.mean(crit, axis=0)
        rows.append({"layers": sname, "mgi": mname, "normalize": norm, "logit_weight": lw, "class_weighting": cw,
                     "proxy": c.tolist(), "criterion": float(c.mean()), "test": test, "test_mean": float(np.mean(test))})
    crit_v = np.array([r["criterion"] for r in rows])
    test_v = np.array([r["test_mean"] for r in rows])
    rho = float(np.corrcoef(np.argsort(np.argsort(crit_v)), np.argsort(np.argsort(test_v)))[0, 1])
    print(f"\n{len(rows)} variants in {time.time() - t0:.0f} s; layers {job.layers}; Spearman(criterion, test mean) = {rho:.2f}\n")
    print("| layers | mgi | normalize | energy weight | classes | patch-perm | blurred | mixed | criterion | "
          + " | ".join(oods) + " | test mean |")
    print("|" + "---|" * (9 + len(oods) + 1))

    def line(r: dict, tag: str = "") -> str:
        return (f"| {tag}{r['layers']} | {r['mgi']} | {r['normalize']} | {r['logit_weight']:g} | {r['class_weighting']} | "
                + " | ".join(f"{p:.1f}" for p in r["proxy"]) + f" | {r['criterion']:.1f} | "
                + " | ".join(f"{t:.1f}" for t in r["test"]) + f" | {r['test_mean']:.1f} |")
    for r in sorted(rows, key=lambda r: -r["criterion"])[: args.top]:
        print(line(r))
    best_test = max(rows, key=lambda r: r["test_mean"])
    print(line(best_test, "(test-best) "))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"layers": job.layers, "oods": oods, "spearman": rho, "rows": rows}, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
