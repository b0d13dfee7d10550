"""Reports: results tables (terminal, Markdown, CSV, JSON) and sweep aggregation (pictures: c2ir.report_html).

Convention stated in every table: scores are higher for OOD; metrics in %. FPR95's positive class
(`metrics.fpr_positive`: id by default, or ood as in OpenOOD v1.5) is named in every FPR95 header
(`FPR95 (ID+)` / `FPR95 (OOD+)`; CSV column `fpr95_id_positive` / `fpr95_ood_positive`) and in
results.json (`fpr_positive`). With near/far groups (`ood.<set>.group`) each detector also gets the
unweighted `near mean` and `far mean` over its sets (c2ir.groups), as OpenOOD reports.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from c2ir.cache import atomic_write_bytes, atomic_write_json
from c2ir.groups import column_sets, grouped_sets, mean_over
from c2ir.names import csv_cell, escape_name

log = logging.getLogger(__name__)

METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out", "detection_acc")
CONVENTIONS = {
    "id": ("Scores: higher = more likely OOD. FPR95 (ID+): OOD false-positive rate at 95% ID true-positive rate "
           "(ID = positive class). All metrics in %."),
    "ood": ("Scores: higher = more likely OOD. FPR95 (OOD+): ID false-positive rate at 95% OOD true-positive rate "
            "(OOD = positive class, as OpenOOD v1.5). All metrics in %."),
}
CONVENTION = CONVENTIONS["id"]  # the default (metrics.fpr_positive=id)
FPR_LABELS = {"id": "FPR95 (ID+)", "ood": "FPR95 (OOD+)"}  # every header that shows FPR95 names its positive class
FPR_COLUMNS = {"id": "fpr95_id_positive", "ood": "fpr95_ood_positive"}  # its column in results.csv


def fpr_positive(result: dict) -> str:
    """The FPR95 convention of a result (results.json written before the setting existed: id); an unknown value
    (a damaged or foreign results.json) is a ValueError, never a table under a wrong header."""
    value = str(result.get("fpr_positive") or "id")
    if value not in CONVENTIONS:
        raise ValueError(f"fpr_positive={escape_name(value)!r} is not one of {tuple(CONVENTIONS)}")
    return value


def convention(result: dict) -> str:
    return CONVENTIONS[fpr_positive(result)]


def fpr_label(result: dict) -> str:
    return FPR_LABELS[fpr_positive(result)]


def run_dir(cfg: Any) -> Path:
    """The Hydra run directory (or `output_dir` when composed without a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        path = Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
        path = Path(str(cfg.get("output_dir") or "outputs/runs/latest"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# What the two C2IR rows are, wherever detectors are listed with labels (tables, CSV/JSON, report.html):
# `c2ir` is this project's default (feature deviations + a logit term weighted on proxy outliers),
# `c2ir_paper` the paper's method (the same feature deviations, no logit term).
DETECTOR_LABELS = {"c2ir": "C2IR + Energy (this project's default)",
                   "c2ir_paper": "C2IR (paper: feature deviations)"}
C2IR_FIRST = ("c2ir", "c2ir_paper")


def label(det: str) -> str:
    """`det`, with what it is for the two C2IR rows (`c2ir: C2IR + Energy (this project's default)`)."""
    return f"{det}: {DETECTOR_LABELS[det]}" if det in DETECTOR_LABELS else det


def c2ir_rank(det: str) -> int:
    """0 for `c2ir`, 1 for `c2ir_paper`, 2 for any other name (the order detectors are listed in)."""
    return C2IR_FIRST.index(det) if det in C2IR_FIRST else len(C2IR_FIRST)


def ordered_detectors(result: dict) -> list[str]:
    """C2IR first (the default, then the paper's form), then the other data-free detectors, then full access."""
    access = result.get("access", {})
    return sorted(result["metrics"], key=lambda d: (access.get(d) == "full access", c2ir_rank(d), d))


def rows(result: dict) -> list[dict[str, Any]]:
    """Long format: one row per detector x OOD set, plus a `mean` row per detector (and, with near/far
    groups, a `near mean` and a `far mean` row: unweighted over the group's sets)."""
    out = []
    groups = grouped_sets(result)
    for det in ordered_detectors(result):
        per_ood = result["metrics"][det]
        access = result.get("access", {}).get(det, "")
        for ood, m in per_ood.items():
            out.append({"detector": det, "access": access, "ood": ood, **{k: m[k] for k in METRICS}})
        out.append({"detector": det, "access": access, "ood": "mean",
                    **{k: float(np.mean([m[k] for m in per_ood.values()])) for k in METRICS}})
        for g, sets in groups.items():
            out.append({"detector": det, "access": access, "ood": f"{g} mean", **{k: mean_over(per_ood, sets, k)
                                                                                 for k in METRICS}})
    return out


def md(name: Any) -> str:
    """A set, detector or layer name in a Markdown table or the terminal: one printable line (control
    characters, e.g. a terminal escape, escaped by `names.escape_name`) that cannot end a table cell."""
    return escape_name(name).replace("|", "\\|")


def summary_table(result: dict) -> str:
    """Markdown table: detectors as rows, AUROC / FPR95 per OOD set, their mean (and near/far means) as columns."""
    cols = column_sets(result)
    fpr = fpr_label(result)
    head = "| detector | access | " + " | ".join(f"{md(c)} AUROC / {fpr}" for c in cols) + " |"
    sep = "|" + "---|" * (len(cols) + 2)
    lines = [head, sep]
    for det in ordered_detectors(result):
        per = result["metrics"][det]
        cells = [f"{mean_over(per, sets, 'auroc'):.1f} / {mean_over(per, sets, 'fpr95'):.1f}" for sets in cols.values()]
        lines.append(f"| {md(label(det))} | {md(result.get('access', {}).get(det, ''))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(result: dict) -> str:
    counts = result.get("counts", {})
    return (f"ID set: {md(result['id_set'])} ({counts.get(result['id_set'], '?')} images), "
            f"ID accuracy: {100 * result['id_accuracy']:.2f}%; OOD sets: "
            + ", ".join(f"{md(o)} ({counts.get(o, '?')})" for o in result["ood_sets"]))


def weights_line(result: dict) -> str:
    """The MGI layer weights, then what each C2IR detector scored with. The job's configured `ipm=` is named only
    when no detector reports its own (a fitted `c2ir` may have chosen another: saying both reads as a contradiction)."""
    w = result.get("layer_weights") or {}
    if not w:
        return ""
    fits = result.get("c2ir_fit") or {}
    chosen = "".join(f"; {md(det)}: ipm={f['ipm']}" + (f", {f['logit_score']} x{f['logit_weight']:g}" if f["logit_weight"] else "")
                     + (f", {f['combination']}" if f.get("combination", "sum") != "sum" else "")
                     + (" (chosen on proxy outliers)" if f.get("selected") else " (configured)")
                     for det, f in fits.items())
    configured = "" if fits else f", ipm={result.get('ipm', {}).get('name')}"
    return (f"C2IR layer weights (MGI, {w.get('method')}){configured}: "
            + ", ".join(f"{md(n)}={v:.3f}" for n, v in zip(w["layers"], w["weights"])) + chosen)


FEW_SAMPLES = 20   # below this a set's 95% quantile (FPR95) is not defined by its data, and AUROC steps by >= 5%


def few_samples_line(result: dict) -> str:
    """Sets too small for their metrics to mean much, named with their sizes ("" when none is): a run on
    `data.max_test_samples=1` otherwise prints AUROC 100.0 / FPR95 0.0 as if measured."""
    counts = result.get("counts") or {}
    small = [(s, counts[s]) for s in [result.get("id_set"), *result.get("ood_sets", [])]
             if s in counts and isinstance(counts[s], int) and counts[s] < FEW_SAMPLES]
    if not small:
        return ""
    return ("Warning: too few images for meaningful metrics: " + ", ".join(f"{md(s)} ({n})" for s, n in small)
            + f"; AUROC and FPR95 need at least {FEW_SAMPLES} images per set (raise data.max_test_samples / "
            "ood.<set>.max_samples, or give a larger folder).")


def not_computable_line(result: dict) -> str:
    """Detectors whose scores held NaN/inf: named with the cause, never given a metric."""
    bad = result.get("not_computable") or {}
    return ("Not computable (no metric reported): " + "; ".join(f"{md(d)}: {md(why)}" for d, why in sorted(bad.items()))
            if bad else "")


def terminal_table(result: dict) -> str:
    return "\n".join(line for line in [header(result), few_samples_line(result), convention(result), summary_table(result),
                                        weights_line(result), not_computable_line(result)] if line)


def csv_columns(result: dict) -> list[str]:
    """The metric columns of results.csv: `fpr95` is written under the name of its convention."""
    return [FPR_COLUMNS[fpr_positive(result)] if k == "fpr95" else k for k in METRICS]


def markdown(result: dict) -> str:
    long = rows(result)
    cols = [fpr_label(result) if k == "fpr95" else k for k in METRICS]
    few = few_samples_line(result)
    lines = ["# c2ir results", "", header(result), "", *([few, ""] if few else []), convention(result), "", "## Summary",
             "", summary_table(result),
             "", weights_line(result), "", *([not_computable_line(result), ""] if result.get("not_computable") else []),
             "## All metrics", "",
             "| detector | access | OOD set | " + " | ".join(cols) + " |", "|" + "---|" * (len(METRICS) + 3)]
    for r in long:
        lines.append(f"| {md(label(r['detector']))} | {md(r['access'])} | {md(r['ood'])} | "
                     + " | ".join(f"{r[k]:.2f}" for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


INCOMPLETE = "REPORTS_INCOMPLETE.txt"


@contextlib.contextmanager
def reports_in_progress(directory: Path) -> Iterator[None]:
    """A marker file in the run folder while its reports are written: each file is written atomically, but a run
    killed between two of them leaves a folder with some reports and not others, and the marker says so."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / INCOMPLETE
    marker.write_text("This run stopped while writing its reports (killed or failed): some files of this folder may "
                      "be missing. Rerun the same command: the results are cached, so it only writes the reports.\n")
    yield
    marker.unlink(missing_ok=True)


def write_reports(directory: Path, result: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / "results.md", markdown(result).encode())
    buf = io.StringIO()
    names = dict(zip(METRICS, csv_columns(result)))
    writer = csv.DictWriter(buf, fieldnames=["detector", "label", "access", "ood", *names.values()])
    writer.writeheader()
    writer.writerows({**{names.get(k, k): csv_cell(v) if isinstance(v, str) else v for k, v in r.items()},
                      "label": DETECTOR_LABELS.get(r["detector"], "")} for r in rows(result))
    atomic_write_bytes(directory / "results.csv", buf.getvalue().encode())
    labels = {d: DETECTOR_LABELS[d] for d in result["metrics"] if d in DETECTOR_LABELS}
    atomic_write_json(directory / "results.json", {**result, "fpr_positive": fpr_positive(result), "rows": rows(result),
                                                   "labels": labels, "convention": convention(result),
                                                   "columns": {"fpr95": fpr_label(result)}})


def sweep_convention(positives: set[str]) -> tuple[str, str]:
    """(convention sentence, FPR95 header) of a sweep's runs; runs with both conventions say so."""
    if len(positives) <= 1:
        p = next(iter(positives), "id")
        return CONVENTIONS[p], FPR_LABELS[p]
    return ("Scores: higher = more likely OOD. FPR95: the runs use both conventions (metrics.fpr_positive=id|ood), "
            "each setting its own: compare FPR95 only within one convention. All metrics in %."), "FPR95 (ID+ or OOD+)"


SEED_KEYS = ("seed=", "synth.seed=")


def _fmt_spread(mean: float, std: float, runs: int) -> str:
    return f"{mean:.2f} +- {std:.2f}" if runs > 1 else f"{mean:.2f} (one run)"


def aggregate(multirun_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    """One table for a sweep: per (overrides without seed) x detector, mean +- std over its runs, with how many
    distinct seeds those runs had (repeats of one seed are not a seed spread), and the sweep's jobs that left no
    results.json (failed or killed) named."""
    import yaml  # PyYAML ships with omegaconf

    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    found = sorted(multirun_dir.rglob("results.json"))
    jobs = sorted(p.parent.parent for p in multirun_dir.rglob(".hydra/overrides.yaml"))
    missing = [j for j in jobs if not (j / "results.json").is_file()]
    skipped, positives = 0, set()
    for path in found:
        try:  # one damaged run must not hide the others: skip it with a warning
            result = json.loads(path.read_text())
            ov_file = path.parent / ".hydra" / "overrides.yaml"
            overrides = [str(o) for o in (yaml.safe_load(ov_file.read_text()) if ov_file.is_file() else []) or []]
            setting = " ".join(o for o in overrides if not o.startswith(SEED_KEYS))
            seed = " ".join(o for o in overrides if o.startswith(SEED_KEYS)) or "the configured seed"
            run_rows = rows(result)
            positives.add(fpr_positive(result))
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
            g["seeds"].append(seed)
    table = []
    for (setting, det), m in groups.items():
        table.append({"setting": setting, "detector": det, "runs": len(m["auroc"]), "seeds": len(set(m["seeds"])),
                      "auroc_mean": float(np.mean(m["auroc"])), "auroc_std": float(np.std(m["auroc"])),
                      "fpr95_mean": float(np.mean(m["fpr95"])), "fpr95_std": float(np.std(m["fpr95"]))})
    note = f" ({skipped} unreadable results.json skipped)" if skipped else ""
    if missing:
        for j in missing:
            log.warning("report: %s has no results.json (the job failed or was killed); it is not in the table", j)
        shown = ", ".join(j.name for j in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        note += f"; {len(missing)} of {len(jobs)} jobs left no results.json (failed or killed): {shown}"
    repeats = any(r["runs"] > r["seeds"] for r in table)
    text, label = sweep_convention(positives)
    lines = [f"Sweep {multirun_dir}: {len(found) - skipped} runs{note}. Mean over OOD sets; mean +- std over the runs "
             "of each setting (the seeds column: how many distinct seeds they had).", text, ""]
    if repeats:
        lines[-1:] = ["Note: some settings repeat a seed; their spread is run-to-run noise, not a spread over seeds.", ""]
    lines += [f"| setting | detector | runs | seeds | AUROC | {label} |", "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {md(r['setting'])} | {md(r['detector'])} | {r['runs']} | {r['seeds']} | "
                     f"{_fmt_spread(r['auroc_mean'], r['auroc_std'], r['runs'])} | "
                     f"{_fmt_spread(r['fpr95_mean'], r['fpr95_std'], r['runs'])} |")
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


def write_scores_csv(path: Path, paths: list[str], pred: list[int], scores: list[float], ood: list[bool]) -> None:
    """`scores.csv`: one row per image. The `path` cell is `names.csv_cell(relative path)`: control characters
    escaped, and a leading `'` when it would start with = + - @ tab CR or ' (OWASP CSV injection), so no
    spreadsheet evaluates it; `names.csv_uncell` gives the file name back exactly."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_MINIMAL)
    w.writerow(["path", "predicted_class", "score", "ood"])
    for p, c, s, o in zip(paths, pred, scores, ood):
        w.writerow([csv_cell(p), c, repr(float(s)), int(o)])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
