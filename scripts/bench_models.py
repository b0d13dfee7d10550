"""Multi-model benchmark of issue 14: every model/data pair x synthesis seeds, then one summary table.

For each model it runs one Hydra multirun `c2ir run -m <experiment> seed=<seeds> cache_root=<cache>`
into `<out>/<model>/`, aggregates it with `c2ir report <out>/<model>` (writes sweep_results.md there),
and writes `<out>/summary.md`:
  - model x detector -> mean AUROC +- std and mean FPR95 +- std over seeds (each run's value is the
    mean over that pair's OOD sets), data-free detectors first;
  - per model: ID accuracy, the share of impressions predicted as their target class (from the
    synthesize artifact each run used), and C2IR vs the best other data-free detector vs Energy per OOD set.

    python scripts/bench_models.py                                   # all four pairs, seeds 0,1,2
    python scripts/bench_models.py --models digits --seeds 0         # the check that runs here in minutes
    python scripts/bench_models.py --models resnet32 -- synth.per_class=10   # extra overrides after --
    python scripts/bench_models.py --cache-root '/tmp/h14/cache_{model}' -- threads=2   # one cache per model

`seed` is in the train/synthesize/collect_stats cache keys (issue 11), so each seed draws its own impressions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's c2ir, as `python scripts/...` from it
from c2ir.report import c2ir_rank, label  # noqa: E402

# model -> Hydra overrides selecting its model/data pair
MODELS: dict[str, list[str]] = {
    "digits": [],                                       # embedded default: small CNN on scikit-learn digits
    "resnet20": ["experiment=cifar10_resnet20_cpu"],    # shared ResNet-20 fine-tuned on CIFAR-10 JPEG
    "resnet32": ["experiment=cifar10_resnet32_cpu"],    # shared original ResNet-32 (PNG-trained) on JPEG
    "resnet44": ["experiment=cifar10_resnet44_cpu"],    # shared original ResNet-44 (PNG-trained) on JPEG
}
ALL_DETECTORS = ("msp,maxlogit,energy,entropy,gen,odin,gradnorm,gaia_a,gaia_z,ash_s,ash_b,scale,nmd,c2ir,c2ir_paper,mahalanobis_imp,"
                 "mahalanobis_multi_imp,knn_imp,react_imp,dice_imp,kl_matching_imp,vim_imp,nac_imp,fdbd_imp,nci_imp,weiper_imp,"
                 "mahalanobis,mahalanobis_multi,knn,react,vim,nac,fdbd,nci,weiper")
SYNTH_KEY = re.compile(r"synthesize/([0-9a-f]+)")


def run_model(name: str, seeds: str, cache: Path, out: Path, extra: list[str]) -> Path:
    sweep = out / name
    cmd = [sys.executable, "-m", "c2ir", "run", "-m", *MODELS[name], f"seed={seeds}", f"detectors=[{ALL_DETECTORS}]",
           f"cache_root={cache}", f"hydra.sweep.dir={sweep}", *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    subprocess.run([sys.executable, "-m", "c2ir", "report", str(sweep)], check=True, stdout=subprocess.DEVNULL)
    return sweep


def target_share(run_dir: Path, cache: Path) -> float | None:
    """Share of impressions predicted as their target, from the synthesize artifact named in the run's log."""
    for log in run_dir.glob("*.log"):
        hit = SYNTH_KEY.search(log.read_text(errors="replace"))
        if hit:
            summary = cache / "synthesize" / hit.group(1) / "summary.json"
            if summary.is_file():
                return float(json.loads(summary.read_text())["target_share"])
    return None


def collect(sweep: Path, cache: Path) -> dict:
    """Per detector: per-seed mean AUROC / FPR95 and per-OOD AUROC; ID accuracy and target share per seed."""
    per_det: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    access: dict[str, str] = {}
    acc, share, oods = [], [], []
    for path in sorted(sweep.rglob("results.json")):
        res = json.loads(path.read_text())
        if "metrics" not in res:
            continue
        oods = res["ood_sets"]
        acc.append(100 * res["id_accuracy"])
        s = target_share(path.parent, cache)
        if s is not None:
            share.append(100 * s)
        access.update(res.get("access", {}))
        for det, per in res["metrics"].items():
            per_det[det]["auroc"].append(float(np.mean([per[o]["auroc"] for o in oods])))
            per_det[det]["fpr95"].append(float(np.mean([per[o]["fpr95"] for o in oods])))
            for o in oods:
                per_det[det][f"auroc/{o}"].append(per[o]["auroc"])
    return {"detectors": per_det, "access": access, "acc": acc, "share": share, "oods": oods}


def _ms(v: list[float]) -> str:
    return f"{np.mean(v):.1f} ± {np.std(v):.1f}" if v else "n/a"


def summary(results: dict[str, dict], seeds: str) -> str:
    models = list(results)
    dets: list[str] = []
    access: dict[str, str] = {}
    for r in results.values():
        access.update(r["access"])
        dets += [d for d in r["detectors"] if d not in dets]
    dets.sort(key=lambda d: (access.get(d) == "full access", c2ir_rank(d), d))
    lines = [f"Seeds {seeds}; each run's value is the mean over its OOD sets; mean ± std over seeds. "
             "Scores: higher = more OOD; FPR95 at 95% ID TPR; %.", "",
             "| model | finished runs | ID accuracy | impressions at their target |", "|---|---|---|---|"]
    lines += [f"| {m} | {len(results[m]['acc'])} | {_ms(results[m]['acc'])} | {_ms(results[m]['share'])} |" for m in models]
    lines += ["", "| detector | access | " + " | ".join(f"{m} AUROC / FPR95" for m in models) + " |",
              "|---|---|" + "---|" * len(models)]
    for d in dets:
        cells = []
        for m in models:
            r = results[m]["detectors"].get(d)
            cells.append(f"{_ms(r['auroc'])} / {np.mean(r['fpr95']):.1f}" if r else "—")
        lines.append(f"| {label(d)} | {access.get(d, '')} | " + " | ".join(cells) + " |")
    for m in models:
        r = results[m]
        free = [d for d in r["detectors"] if access.get(d) != "full access" and not d.startswith("c2ir")]
        if "c2ir" not in r["detectors"] or not free:
            continue
        best = max(free, key=lambda d: np.mean(r["detectors"][d]["auroc"]))
        lines += ["", f"{m}: C2IR (default, and the paper's form) vs the best other data-free detector ({best}) "
                  "vs Energy, mean AUROC per OOD set; last row: the best other data-free detector of each set",
                  "", "| detector | " + " | ".join(r["oods"]) + " | mean |", "|---|" + "---|" * (len(r["oods"]) + 1)]
        for d in dict.fromkeys(["c2ir", "c2ir_paper", best, "energy"]):
            if d in r["detectors"]:
                x = r["detectors"][d]
                lines.append(f"| {label(d)} | " + " | ".join(f"{np.mean(x[f'auroc/{o}']):.1f}" for o in r["oods"])
                             + f" | {np.mean(x['auroc']):.1f} |")
        per_set = {o: max(free, key=lambda d: np.mean(r["detectors"][d][f"auroc/{o}"])) for o in r["oods"]}
        lines.append("| best other per set | " + " | ".join(
            f"{np.mean(r['detectors'][d][f'auroc/{o}']):.1f} ({d})" for o, d in per_set.items()) + " | |")
        c2 = r["detectors"]["c2ir"]
        gaps = {o: np.mean(c2[f"auroc/{o}"]) - np.mean(r["detectors"][d][f"auroc/{o}"]) for o, d in per_set.items()}
        lines.append("")
        lines.append(f"{m}: c2ir minus the best other data-free detector: mean {np.mean(c2['auroc']) - np.mean(r['detectors'][best]['auroc']):+.1f}; "
                     "per set " + ", ".join(f"{o} {g:+.1f}" for o, g in gaps.items()))
        if "c2ir_paper" in r["detectors"]:
            p_ = r["detectors"]["c2ir_paper"]
            lines.append(f"{m}: c2ir minus c2ir_paper (what the logit term and the proxy choices add): mean "
                         f"{np.mean(c2['auroc']) - np.mean(p_['auroc']):+.1f}; per set "
                         + ", ".join(f"{o} {np.mean(c2[f'auroc/{o}']) - np.mean(p_[f'auroc/{o}']):+.1f}" for o in r["oods"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {sorted(MODELS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cache-root", type=Path, default=Path("outputs/cache_bench"),
                   help="cache root; '{model}' in it is replaced by the model name (one cache per model)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_models"))
    p.add_argument("--summarize-only", action="store_true", help="only rebuild summary.md from existing sweeps")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"bench_models: error: unknown model(s) {unknown}; choose from {sorted(MODELS)}", file=sys.stderr)
        return 2
    results = {}
    for m in models:
        cache = Path(str(args.cache_root).replace("{model}", m))
        sweep = args.out / m if args.summarize_only else run_model(m, args.seeds, cache, args.out, extra)
        results[m] = collect(sweep, cache)
    text = summary(results, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
