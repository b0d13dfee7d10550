"""Reports: results tables (terminal, Markdown, CSV, JSON) and sweep aggregation (pictures: c2ir.report_html).

Convention stated in every table: scores are higher for OOD; FPR95 is the OOD false-
positive rate at 95% ID true-positive rate (ID is the positive class); metrics in %.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from c2ir.cache import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out", "detection_acc")
CONVENTION = ("Scores: higher = more likely OOD. FPR95: OOD false-positive rate at 95% ID true-positive rate "
              "(ID = positive class). All metrics in %.")


def run_dir(cfg: Any) -> Path:
    """The Hydra run directory (or `output_dir` when composed without a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        path = Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
        path = Path(str(cfg.get("output_dir") or "outputs/runs/latest"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def ordered_detectors(result: dict) -> list[str]:
    """C2IR first, then the other data-free detectors, then the full-access comparators."""
    access = result.get("access", {})
    return sorted(result["metrics"], key=lambda d: (access.get(d) == "full access", d != "c2ir", d))


def rows(result: dict) -> list[dict[str, Any]]:
    """Long format: one row per detector x OOD set, plus a `mean` row per detector."""
    out = []
    for det in ordered_detectors(result):
        per_ood = result["metrics"][det]
        access = result.get("access", {}).get(det, "")
        for ood, m in per_ood.items():
            out.append({"detector": det, "access": access, "ood": ood, **{k: m[k] for k in METRICS}})
        out.append({"detector": det, "access": access, "ood": "mean",
                    **{k: float(np.mean([m[k] for m in per_ood.values()])) for k in METRICS}})
    return out


def summary_table(result: dict) -> str:
    """Markdown table: detectors as rows, AUROC / FPR95 per OOD set and their mean as columns."""
    oods = result["ood_sets"]
    head = "| detector | access | " + " | ".join(f"{o} AUROC / FPR95" for o in oods) + " | mean AUROC / FPR95 |"
    sep = "|" + "---|" * (len(oods) + 3)
    lines = [head, sep]
    for det in ordered_detectors(result):
        per = result["metrics"][det]
        cells = [f"{per[o]['auroc']:.1f} / {per[o]['fpr95']:.1f}" for o in oods]
        mean_auc = np.mean([per[o]["auroc"] for o in oods])
        mean_fpr = np.mean([per[o]["fpr95"] for o in oods])
        lines.append(f"| {det} | {result.get('access', {}).get(det, '')} | " + " | ".join(cells)
                     + f" | {mean_auc:.1f} / {mean_fpr:.1f} |")
    return "\n".join(lines)


def header(result: dict) -> str:
    counts = result.get("counts", {})
    return (f"ID set: {result['id_set']} ({counts.get(result['id_set'], '?')} images), "
            f"ID accuracy: {100 * result['id_accuracy']:.2f}%; OOD sets: "
            + ", ".join(f"{o} ({counts.get(o, '?')})" for o in result["ood_sets"]))


def weights_line(result: dict) -> str:
    w = result.get("layer_weights") or {}
    if not w:
        return ""
    return (f"C2IR: ipm={result.get('ipm', {}).get('name')}, MGI weights ({w.get('method')}): "
            + ", ".join(f"{n}={v:.3f}" for n, v in zip(w["layers"], w["weights"])))


def terminal_table(result: dict) -> str:
    return "\n".join([header(result), CONVENTION, summary_table(result), weights_line(result)])


def markdown(result: dict) -> str:
    long = rows(result)
    lines = ["# c2ir results", "", header(result), "", CONVENTION, "", "## Summary", "", summary_table(result), "",
             weights_line(result), "", "## All metrics", "",
             "| detector | access | OOD set | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 3)]
    for r in long:
        lines.append(f"| {r['detector']} | {r['access']} | {r['ood']} | " + " | ".join(f"{r[k]:.2f}" for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def write_reports(directory: Path, result: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / "results.md", markdown(result).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["detector", "access", "ood", *METRICS])
    writer.writeheader()
    writer.writerows(rows(result))
    atomic_write_bytes(directory / "results.csv", buf.getvalue().encode())
    atomic_write_json(directory / "results.json", {**result, "rows": rows(result), "convention": CONVENTION})


def aggregate(multirun_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    """One table for a sweep: per (overrides without seed) x detector, mean +- std over seeds."""
    import yaml  # PyYAML ships with omegaconf

    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    found = sorted(multirun_dir.rglob("results.json"))
    skipped = 0
    for path in found:
        try:  # one damaged run must not hide the others: skip it with a warning
            result = json.loads(path.read_text())
            ov_file = path.parent / ".hydra" / "overrides.yaml"
            overrides = yaml.safe_load(ov_file.read_text()) if ov_file.is_file() else []
            setting = " ".join(str(o) for o in overrides or [] if not str(o).startswith(("seed=", "synth.seed=")))
            run_rows = rows(result)
        except Exception as exc:  # noqa: BLE001 - bad JSON, wrong shape, bad overrides.yaml alike
            log.warning("report: skipping %s (%s: %s)", path, type(exc).__name__, str(exc).splitlines()[0][:120] if str(exc) else "")
            skipped += 1
            continue
        for r in run_rows:
            if r["ood"] != "mean":
                continue
            g = groups[(setting or "(defaults)", r["detector"])]
            g["auroc"].append(r["auroc"])
            g["fpr95"].append(r["fpr95"])
    table = []
    for (setting, det), m in groups.items():
        table.append({"setting": setting, "detector": det, "runs": len(m["auroc"]),
                      "auroc_mean": float(np.mean(m["auroc"])), "auroc_std": float(np.std(m["auroc"])),
                      "fpr95_mean": float(np.mean(m["fpr95"])), "fpr95_std": float(np.std(m["fpr95"]))})
    note = f" ({skipped} unreadable results.json skipped)" if skipped else ""
    lines = [f"Sweep {multirun_dir}: {len(found) - skipped} runs{note}. Mean over OOD sets; mean +- std over seeds.",
             CONVENTION, "",
             "| setting | detector | runs | AUROC | FPR95 |", "|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['setting']} | {r['detector']} | {r['runs']} | {r['auroc_mean']:.2f} +- {r['auroc_std']:.2f} "
                     f"| {r['fpr95_mean']:.2f} +- {r['fpr95_std']:.2f} |")
    return "\n".join(lines), table


def pareto_front(costs: list[float], values: list[float], higher_is_better: bool = True) -> list[bool]:
    """For each point, True if no other point is at most as costly and at least as good, and strictly
    better in one of the two (the points worth paying for: cost against quality)."""
    sign = 1.0 if higher_is_better else -1.0
    out = []
    for i, (c, v) in enumerate(zip(costs, values)):
        dominated = any(cj <= c and sign * vj >= sign * v and (cj < c or sign * vj > sign * v)
                        for j, (cj, vj) in enumerate(zip(costs, values)) if j != i)
        out.append(not dominated)
    return out
