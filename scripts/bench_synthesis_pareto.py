"""C2IR's detection quality against the cost of its synthesis (issue 20): a Pareto table and plot.

For each model and each `--grid` (Hydra sweep overrides of the synthesis) it runs one multirun
`c2ir run -m <experiment> seed=<seeds> <grid> 'detectors=[c2ir,energy]' report.figures=false` into
`<out>/<model>/<grid tag>/`, with one cache root per model so the feature passes of the test sets
(which do not depend on the synthesis) are computed once per model. Then it reads every run below
`<out>/<model>/` and writes `<out>/pareto.md`, `pareto.json` and `pareto.png`:

  per model x setting: impressions, cost in forward+backward equivalents (one image through the model and
  back at full resolution; a half-resolution iteration counts 1/4; exact, from the synthesize artifact),
  that cost relative to `synth=deepinversion`, the wall seconds of the synthesis (the artifact's build time:
  it depends on the machine's load, so time comparisons belong in one run on a quiet machine,
  scripts/bench_synthesis_ratio.py), C2IR's mean AUROC and FPR95 (mean over the pair's OOD sets, mean +- std
  over seeds), Energy's, and whether the setting is on the Pareto front (no cheaper setting at least as good).

    python scripts/bench_synthesis_pareto.py --models digits --seeds 0 --grid synth=deepinversion \\
        --grid 'synth.iterations=20,40 synth.lr=0.1,0.25'
    python scripts/bench_synthesis_pareto.py --models resnet20 --cache-root 'outputs/pareto/cache_{model}' \\
        --grid synth=deepinversion --grid synth=default -- threads=1
    python scripts/bench_synthesis_pareto.py --collect-only --models digits,resnet20   # tables from existing runs
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench_models import MODELS
from c2ir import plots
from c2ir.report import pareto_front
from c2ir.synth_schedule import synthesis_cost

SYNTH_KEY = re.compile(r"synthesize/([0-9a-f]{16})")
# overrides that say how a run was made, not which synthesis setting it is
NOT_A_SETTING = ("seed", "synth.seed", "detectors", "cache_root", "threads", "report.figures", "experiment",
                 "hydra.sweep.dir", "num_workers", "batch_size")


def grid_tag(grid: str) -> str:
    return "g" + hashlib.sha256(grid.encode()).hexdigest()[:8]


def run_grid(model: str, grid: str, seeds: str, cache: Path, out: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "c2ir", "run", "-m", *MODELS[model], f"seed={seeds}", *grid.split(),
           "detectors=[c2ir,energy]", "report.figures=false", f"cache_root={cache}",
           f"hydra.sweep.dir={out / model / grid_tag(grid)}", *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def synthesis_of(run_dir: Path, result: dict, cache: Path) -> dict | None:
    """{impressions, cost, seconds} from results.json (written since issue 20) or the cache via the run log."""
    if isinstance(result.get("synthesis"), dict):
        return result["synthesis"]
    for log in run_dir.glob("*.log"):
        hit = SYNTH_KEY.search(log.read_text(errors="replace"))
        if hit:
            art = cache / "synthesize" / hit.group(1)
            if (art / "summary.json").is_file():
                s = json.loads((art / "summary.json").read_text())
                man = json.loads((art / "manifest.json").read_text())
                synth = man["config"]["synth"]
                cost = s.get("cost") or synthesis_cost([s["count"]], [synth["iterations"]],
                                                       [synth.get("warmup_iterations") or 0])
                return {"impressions": s["count"], "cost": cost, "seconds": man.get("seconds")}
    return None


# synth fields that do not make a setting: the seed, the data's jitter/flip, runtime-only options
NOT_A_SYNTH_FIELD = ("seed", "jitter", "flip", "autocast", "channels_last", "compile")
PRESETS = ("default", "deepinversion", "multires")


@functools.lru_cache(maxsize=1)
def preset_values() -> dict[str, dict]:
    """Each preset's full synth values, composed as a run composes them (the YAML files list only what differs);
    composed once per process."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from c2ir.config import config_dir, register_resolvers

    register_resolvers()
    out = {}
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for p in PRESETS:
            synth = OmegaConf.to_container(compose("config", overrides=[f"synth={p}"]).synth, resolve=False)
            out[p] = {k: v for k, v in synth.items() if k not in NOT_A_SYNTH_FIELD}
    return out


def setting_label(overrides: list[str], synth: dict | None = None, image_size: int = 32, classes: int = 10) -> str:
    """A run's synthesis setting, named from its resolved `synth` config when it has one: the preset it
    equals (`synth=default`, `synth=deepinversion`, `synth=multires`), else the nearer preset and the fields that differ.
    So runs made before the default changed (their overrides were relative to the former default) get
    the same name as today's runs of the same setting; fields a run predates had their
    `synth=deepinversion` values, except that runs from before `warmup_min_size` halved every image
    (`synth.warmup_min_size=0`, which differs from today's 16 where half the image is under 16 px).
    A batch size above the number of impressions is the same setting as any other such size.
    Without a saved config: the run's overrides."""
    if synth is None:
        keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_A_SETTING]
        return " ".join(keep) or "synth=default"
    presets = preset_values()
    values = {k: synth.get(k, v) for k, v in presets["deepinversion"].items() if k not in NOT_A_SYNTH_FIELD}
    if "warmup_min_size" not in synth and values["warmup_iterations"] and image_size // 2 < values["warmup_min_size"]:
        values["warmup_min_size"] = 0
    count = int(values["per_class"]) * classes

    def same(k: str, v, preset: dict) -> bool:
        return min(v, count) == min(preset[k], count) if k == "batch_size" else v == preset[k]

    name, diff = min(((p, [f"synth.{k}={v}" for k, v in values.items() if not same(k, v, presets[p])]) for p in PRESETS),
                     key=lambda pd: len(pd[1]))
    return " ".join([f"synth={name}", *diff])


def collect(model: str, out: Path, cache: Path) -> dict[str, dict]:
    """setting -> {runs: [{auroc, fpr95, energy_auroc, cost, seconds, impressions}]} for one model."""
    import yaml

    settings: dict[str, dict] = defaultdict(lambda: {"runs": []})
    for path in sorted((out / model).rglob("results.json")):
        res = json.loads(path.read_text())
        if "c2ir" not in res.get("metrics", {}):
            continue
        ov = path.parent / ".hydra" / "overrides.yaml"
        overrides = [str(o) for o in (yaml.safe_load(ov.read_text()) or [])] if ov.is_file() else []
        saved = path.parent / ".hydra" / "config.yaml"
        conf = (yaml.safe_load(saved.read_text()) or {}) if saved.is_file() else {}
        data = conf.get("data") or {}
        synth, size, classes = conf.get("synth"), int(data.get("image_size") or 32), int(data.get("num_classes") or 10)
        syn = synthesis_of(path.parent, res, cache)
        if syn is None:
            print(f"bench_synthesis_pareto: no synthesis record for {path}; skipped", file=sys.stderr)
            continue
        oods = res["ood_sets"]
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), "0")
        run = {"seed": seed, "impressions": syn["impressions"], "cost": float(syn["cost"]), "seconds": syn.get("seconds"),
               **{f"{d}_{m}": float(np.mean([res["metrics"][d][o][m] for o in oods]))
                  for d in ("c2ir", "energy") if d in res["metrics"] for m in ("auroc", "fpr95")}}
        s = settings[setting_label(overrides, synth, size, classes)]
        if all(r["seed"] != seed for r in s["runs"]):  # the same setting in two grids: keep one run per seed
            s["runs"].append(run)
    return dict(settings)


def summarize(per_model: dict[str, dict[str, dict]]) -> dict[str, list[dict]]:
    table: dict[str, list[dict]] = {}
    for model, settings in per_model.items():
        rows = []
        for label, s in settings.items():
            runs = s["runs"]
            secs = [r["seconds"] for r in runs if r["seconds"] is not None]
            row = {"setting": label, "seeds": len(runs), "impressions": runs[0]["impressions"],
                   "cost": float(np.mean([r["cost"] for r in runs])), "seconds": float(np.mean(secs)) if secs else None}
            for k in ("c2ir_auroc", "c2ir_fpr95", "energy_auroc"):
                vals = [r[k] for r in runs if k in r]
                row[k], row[k + "_std"] = (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), 0.0)
            rows.append(row)
        rows.sort(key=lambda r: r["cost"])
        base = next((r["cost"] for r in rows if r["setting"] == "synth=deepinversion"), None)
        on_auroc = pareto_front([r["cost"] for r in rows], [r["c2ir_auroc"] for r in rows], True)
        on_fpr = pareto_front([r["cost"] for r in rows], [r["c2ir_fpr95"] for r in rows], False)
        for r, a, f in zip(rows, on_auroc, on_fpr):
            r["relative_cost"] = r["cost"] / base if base else None
            r["pareto"] = ("A" if a else "") + ("F" if f else "")
        table[model] = rows
    return table


def markdown(table: dict[str, list[dict]]) -> str:
    lines = ["C2IR's mean AUROC / FPR95 over each pair's OOD sets (mean ± std over seeds) against the synthesis cost. "
             "Cost: forward+backward equivalents (images x iterations, half-resolution iterations x 1/4), exact; "
             "relative: to synth=deepinversion; wall s: mean build time of the synthesis artifact (load-dependent). "
             "Pareto: A = on the AUROC front, F = on the FPR95 front.", ""]
    for model, rows in table.items():
        lines += [f"### {model}", "",
                  "| setting | seeds | impressions | cost (fwd+bwd) | relative | wall s | C2IR AUROC | C2IR FPR95 | Energy AUROC | Pareto |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            rel = f"{r['relative_cost']:.3f}" if r["relative_cost"] is not None else "-"
            sec = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
            lines.append(f"| {r['setting']} | {r['seeds']} | {r['impressions']} | {r['cost']:,.0f} | {rel} | {sec} | "
                         f"{r['c2ir_auroc']:.1f} ± {r['c2ir_auroc_std']:.1f} | {r['c2ir_fpr95']:.1f} ± "
                         f"{r['c2ir_fpr95_std']:.1f} | {r['energy_auroc']:.1f} | {r['pareto']} |")
        lines.append("")
    return "\n".join(lines)


def figure(table: dict[str, list[dict]]):
    points = {m: [{"cost": r["cost"], "auroc": r["c2ir_auroc"], "auroc_std": r["c2ir_auroc_std"],
                   "fpr95": r["c2ir_fpr95"], "fpr95_std": r["c2ir_fpr95_std"], "label": r["setting"],
                   "highlight": r["setting"] in ("synth=deepinversion", "synth=default")} for r in rows]
              for m, rows in table.items()}
    return plots.pareto_figure(points, "synthesis cost (forward+backward equivalents, images x iterations)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits,resnet20,resnet32,resnet44", help=f"comma list of {sorted(MODELS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--grid", action="append", default=[],
                   help="Hydra sweep overrides of one multirun (repeatable), e.g. 'synth.iterations=20,40'")
    p.add_argument("--out", type=Path, default=Path("outputs/pareto"))
    p.add_argument("--cache-root", default="outputs/pareto/cache_{model}", help="'{model}' is replaced by the model")
    p.add_argument("--collect-only", action="store_true", help="only rebuild the tables and plot from existing runs")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"bench_synthesis_pareto: error: unknown model(s) {unknown}; choose from {sorted(MODELS)}", file=sys.stderr)
        return 2
    per_model = {}
    for m in models:
        cache = Path(args.cache_root.replace("{model}", m))
        if not args.collect_only:
            for grid in args.grid:
                run_grid(m, grid, args.seeds, cache, args.out, extra)
        per_model[m] = collect(m, args.out, cache)
    table = summarize(per_model)
    text = markdown(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pareto.md").write_text(text)
    (args.out / "pareto.json").write_text(json.dumps(table, indent=1))
    plots.save_png(plots.to_png(figure(table)), args.out / "pareto.png")
    print(text)
    print(f"written: {args.out / 'pareto.md'}, pareto.json, pareto.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
