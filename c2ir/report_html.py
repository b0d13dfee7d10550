"""One self-contained HTML page per run (`report.html`) and per sweep (`sweep_report.html`).

Why: people look at pictures before numbers, and a single file that opens from disk
(images embedded as `data:` URIs, inline CSS, no JavaScript, no network) can be mailed or
archived with the run. The page is written *after* the Markdown/CSV/JSON tables, and every
figure is drawn inside a guard: a failing plot becomes a warning in the log and a note on
the page, never a lost result. Inputs that a run lacks (an old evaluate artifact without
per-layer AUROC, a synthesis artifact that was deleted) also become notes.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from c2ir import plots
from c2ir.cache import DamagedFile, atomic_write_bytes, discard_verified, read_verified_bytes, write_verified_bytes
from c2ir.groups import column_sets, grouped_sets, mean_over
from c2ir.names import safe_filename
from c2ir.report import (METRICS, c2ir_rank, convention, few_samples_line, fpr_label, fpr_positive, label,
                         not_computable_line, ordered_detectors, sweep_convention)

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"fpr95"}
METRIC_TITLES = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out",
                 "detection_acc": "Detection accuracy"}
GROUPS = ("C2IR", "data-free", "full access")
SEED_KEYS = ("seed", "synth.seed")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1300px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em 0;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f3f3f3}
td.name,th.name{text-align:left}tr.group td{background:#e9eef6;font-weight:600;text-align:left}
td.best{font-weight:700;background:#d9f2d9}
.note{background:#fff6e0;border-left:4px solid #e0a800;padding:.4em .7em;margin:.6em 0}
.explain{background:#eef4fb;border-left:4px solid #5b8fd6;padding:.4em .7em;margin:.6em 0}
.meta{color:#555}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em;border:1px solid #ddd}
img{max-width:100%;height:auto;display:block;margin:.4em 0 1em 0}
.row{display:flex;flex-wrap:wrap;gap:0 2%;align-items:flex-start}.row img{max-width:48%}
td.bestfree{text-decoration:underline;font-weight:600}.scroll{overflow-x:auto;max-width:100%}
tr.published td{color:#555;font-style:italic;background:#f6f6f6}tr.group.published td{background:#e4e4e4}
nav ul{columns:3;list-style:none;padding-left:0}nav a{text-decoration:none}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


class FigureCache:
    """Drawn figures as PNG files in one folder (e.g. `<cache_root>/report_figures/<key>/`).

    Why: drawing ~20 figures costs seconds; a cache-hit `c2ir run` re-renders the page from
    these bytes instead. The folder's key must cover every input of the figures (the caller
    hashes the evaluate and synthesis keys with `plots.VERSION`). Each file is written
    atomically with a content-hash sidecar, and read back only when it matches (a damaged
    figure is drawn again); a failed figure is never stored, so it is retried next time.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder

    def _path(self, name: str) -> Path:
        return self.folder / f"{safe_filename(name)}.png"  # type: ignore[operator]

    def get(self, name: str) -> bytes | None:
        """The cached PNG if its bytes are what was stored (content-hash sidecar), else None (redrawn)."""
        if self.folder is None or not self._path(name).exists():
            return None
        try:
            return read_verified_bytes(self._path(name))
        except (DamagedFile, OSError) as exc:
            log.warning("report: cached figure %s is damaged (%s); drawing it again", name, exc)
            discard_verified(self._path(name))
            return None

    def put(self, name: str, png: bytes) -> None:
        if self.folder is None:
            return
        try:
            write_verified_bytes(self._path(name), png)
        except OSError as exc:
            log.warning("report: could not cache figure %s (%s)", name, exc)

    def draw(self, name: str, make: Callable[[], Any]) -> bytes:
        """The cached PNG, or draw it with `make()` (a Figure, or PNG bytes; exceptions propagate) and cache it."""
        png = self.get(name)
        if png is None:
            made = make()
            png = made if isinstance(made, bytes) else plots.to_png(made)
            self.put(name, png)
        return png


class Page:
    """An HTML document assembled from sections; figures are embedded and guarded."""

    def __init__(self, title: str, cache: FigureCache | None = None):
        self.title = title
        self.cache = cache or FigureCache(None)
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.failures: list[str] = []

    def section(self, anchor: str, title: str) -> None:
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{esc(anchor)}">{esc(title)}</h2>')

    def add(self, raw_html: str) -> None:
        self.parts.append(raw_html)

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{esc(text)}</p>')

    def note(self, text: str) -> None:
        self.text(text, "note")

    def open_row(self) -> None:
        self.parts.append('<div class="row">')

    def close_row(self) -> None:
        self.parts.append("</div>")

    def figure(self, what: str, make: Callable[[], Any], save_as: Path | None = None) -> bool:
        """Draw `make()`, embed it as a PNG data URI (and save it as `save_as`); on error: warn and note."""
        try:
            png = self.cache.draw(what, make)
        except Exception as exc:  # a picture must never cost the results
            self.failures.append(what)
            log.warning("report: could not draw %s (%s: %s); the tables are unaffected", what, type(exc).__name__, exc)
            self.note(f"The figure '{what}' could not be drawn ({type(exc).__name__}: {exc}).")
            return False
        if save_as is not None:
            try:
                plots.save_png(png, save_as)
            except OSError as exc:
                log.warning("report: could not save %s (%s)", save_as, exc)
        b64 = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<img alt="{esc(what)}" src="data:image/png;base64,{b64}">')
        return True

    def render(self, subtitle_html: str = "") -> str:
        toc = "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t in self.toc)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
                f"<h1>{esc(self.title)}</h1>{subtitle_html}<nav><ul>{toc}</ul></nav>"
                + "\n".join(self.parts) + "</body></html>\n")


# ----------------------------------------------------------------------------- tables

def detector_group(det: str, access: str) -> str:
    """C2IR (and its variants), the other data-free detectors, the full-access comparators."""
    if det.startswith("c2ir"):
        return "C2IR"
    return "full access" if access == "full access" else "data-free"


def best_marks(values: Mapping[str, float], metric: str, digits: int = 1) -> set[str]:
    """Names holding the best value of a column as displayed (ties all marked)."""
    finite = {k: round(v, digits) for k, v in values.items() if np.isfinite(v)}
    if not finite:
        return set()
    best = min(finite.values()) if metric in LOWER_IS_BETTER else max(finite.values())
    return {k for k, v in finite.items() if v == best}


def metric_title(result: dict, metric: str) -> str:
    """A metric's display name; FPR95's names its positive class (`FPR95 (ID+)` / `FPR95 (OOD+)`)."""
    return fpr_label(result) if metric == "fpr95" else METRIC_TITLES.get(metric, metric)


def metric_table(result: dict, metric: str) -> str:
    """Detectors (grouped by data access) x OOD sets + mean (+ near / far means when grouped), one metric.

    Best per column in bold on green; when a full-access detector holds it, the best of the
    data-free ones (what C2IR competes with) is underlined as well.
    """
    access = result.get("access", {})
    dets = ordered_detectors(result)
    cols: dict[str, dict[str, float]] = {c: {d: mean_over(result["metrics"][d], sets, metric) for d in dets}
                                         for c, sets in column_sets(result).items()}
    best = {c: best_marks(v, metric) for c, v in cols.items()}
    free = [d for d in dets if access.get(d) != "full access"]
    best_free = {c: best_marks({d: v[d] for d in free}, metric) - best[c] for c, v in cols.items()}
    arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    head = ('<table><tr><th class="name">detector</th>' + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>")
    body = []
    for group in GROUPS:
        members = [d for d in dets if detector_group(d, access.get(d, "")) == group]
        if not members:
            continue
        body.append(f'<tr class="group"><td colspan="{len(cols) + 1}">{esc(group)}</td></tr>')
        for d in members:
            cells = "".join(f'<td class="best">{v[d]:.1f}</td>' if d in best[c] else
                            f'<td class="bestfree">{v[d]:.1f}</td>' if d in best_free[c] else f"<td>{v[d]:.1f}</td>"
                            for c, v in cols.items())
            body.append(f'<tr><td class="name">{esc(label(d))}</td>{cells}</tr>')
    return f"<div><h3>{esc(metric_title(result, metric))} ({arrow})</h3>" + head + "".join(body) + "</table></div>"


def small_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f'<th{" class=name" if i == 0 else ""}>{esc(c)}</th>' for i, c in enumerate(header))
    b = "".join("<tr>" + "".join(f'<td{" class=name" if i == 0 else ""}>{esc(c)}</td>' for i, c in enumerate(r))
                + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


# ----------------------------------------------------------------------------- run page

@dataclass
class RunInputs:
    """Everything the run page shows; any piece but `result` may be missing (-> a note)."""

    result: dict
    scores: dict[str, dict[str, np.ndarray]] | None = None
    impressions: dict[str, np.ndarray] | None = None  # images (N,C,H,W) in [0,1], targets, predicted
    curves: dict[str, np.ndarray] | None = None  # loss term -> (batches, iterations)
    synth_summary: dict | None = None
    config_yaml: str | None = None
    keys: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figure_cache: Path | None = None  # folder of already drawn figures for exactly these inputs
    published: str | None = None  # a benchmark of c2ir.published (report.published): its rows beside the measured


def split_scores(flat: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """`{"<detector>/<set>": tensor}` (the evaluate artifact's layout) -> nested numpy dict."""
    out: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for k, v in flat.items():
        det, s = k.split("/", 1)
        out[det][s] = np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float64)
    return dict(out)


def run_page(inp: RunInputs, directory: Path | None = None, histograms: "HistogramPNGs | None" = None) -> Page:
    """Build the run page; PNGs for scripts (roc_<ood>.png) go to `directory` if given (`histograms`: the
    histogram PNGs shared with the hist_<det>.png files, see `write_run_report`)."""
    res = inp.result
    id_name, oods = res["id_set"], list(res["ood_sets"])
    dets = ordered_detectors(res)
    page = Page("c2ir run report", FigureCache(inp.figure_cache))
    for n in inp.notes:
        page.note(n)

    counts = res.get("counts", {})
    page.section("summary", "Summary")
    page.text(f"ID set: {id_name} ({counts.get(id_name, '?')} images), ID accuracy {100 * res['id_accuracy']:.2f}%. "
              "OOD sets: " + ", ".join(f"{o} ({counts.get(o, '?')})" for o in oods) + ".")
    if res.get("not_computable"):
        page.note(not_computable_line(res))
    if few := few_samples_line(res):
        page.note(few)
    _summary_section(page, res)
    if inp.published:
        _published_section(page, res, inp.published)

    page.section("results", "Results")
    page.text(convention(res) + " Best value per column in bold on green; if that is a full-access detector, the best "
              "data-free value is underlined too. Detectors grouped by the data they use (C2IR; other data-free "
              "detectors: model and impressions only; full access: real ID training data).")
    page.open_row()
    for metric in ("auroc", "fpr95", *[m for m in METRICS if m not in ("auroc", "fpr95")]):
        page.add(metric_table(res, metric))
    page.close_row()
    below = below_chance_note(res)
    if below:   # an explanation of the figures, not a missing input: its own style, not a note
        page.text(below, "explain")

    page.section("logit-term", "What C2IR's logit term adds")
    _logit_term_section(page, res)

    page.section("roc", "ROC curves")
    scores = inp.scores
    histograms = histograms or HistogramPNGs(inp, page.cache)
    if scores is None:
        page.note("Scores not available (scores.safetensors missing from the evaluate artifact): no ROC curves or histograms.")
    else:
        page.text("One panel per OOD set; legend sorted by AUROC (in brackets); colour plus line style keep up to 40 "
                  "detectors apart; C2IR lines are thicker.")
        page.open_row()
        for ood in oods:
            aurocs = {d: res["metrics"][d][ood]["auroc"] for d in dets if d in res["metrics"]}
            page.figure(f"ROC {id_name} vs {ood}",
                        lambda o=ood, a=aurocs: plots.roc_figure({d: scores[d] for d in dets if d in scores}, id_name, o, a),
                        save_as=None if directory is None else directory / f"roc_{safe_filename(ood)}.png")
        page.close_row()
        page.section("histograms", "Score histograms")
        page.text(f"One panel per detector: {id_name} (black) against each OOD set; density, scores clipped to the "
                  "0.5-99.5 percentile range. Good separation = the black curve apart from the coloured ones.")
        page.figure("score histograms", lambda: histograms.panel())

    page.section("impressions", "Impressions")
    _impressions_section(page, inp)
    page.section("synthesis", "Synthesis loss curves")
    if inp.curves:
        page.text("DeepInversion loss per iteration for each batch: total, cross-entropy to the target class (ce), "
                  "BatchNorm-statistics distance (bn), total variation (tv).")
        page.figure("synthesis loss curves", lambda: plots.synthesis_curves(inp.curves))
    else:
        page.note("Synthesis loss curves not available (no curves.safetensors in the synthesis artifact).")

    page.section("layers", "C2IR layers: MGI weights and per-layer AUROC")
    _layers_section(page, res)

    page.section("config", "Resolved config")
    page.add(f"<pre>{esc(inp.config_yaml)}</pre>" if inp.config_yaml else "")
    if not inp.config_yaml:
        page.note("The resolved config is not available.")
    page.section("artifacts", "Artifacts used")
    if inp.keys:
        page.add(small_table(["artifact", "key"], sorted(inp.keys.items())))
    else:
        page.note("Artifact keys not available.")
    return page


BELOW_CHANCE = 40.0   # AUROC (%): clearly below a random ranking, not noise around 50


def below_chance_note(result: dict, limit: int = 12) -> str:
    """Why some AUROCs sit far below 50 (pure): those detectors rank the OOD set as *more* in-distribution than the
    ID test set, because the model is more confident on it (typically on noise); "" when none does."""
    pairs = sorted(((m["auroc"], d, o) for d, per in result.get("metrics", {}).items() for o, m in per.items()
                    if m.get("auroc") is not None and m["auroc"] < BELOW_CHANCE), key=lambda t: (t[0], t[1], t[2]))
    if not pairs:
        return ""
    named = ", ".join(f"{d} on {o} ({a:.1f})" for a, d, o in pairs[:limit])
    more = f" and {len(pairs) - limit} more" if len(pairs) > limit else ""
    return (f"Below chance (AUROC < {BELOW_CHANCE:g}): {named}{more}. These detectors score that OOD set as more "
            "in-distribution than the ID test set: the model is more confident on those inputs than on real ID data "
            "(over-confidence on noise is common). Usually that is the model's behaviour, not a fault of the run (a "
            "damaged model or setting can do it too: check the ID accuracy and any warning above); reversing the score "
            "would need knowledge of the OOD set, which a data-free detector does not have.")


def _logit_term_section(page: Page, res: dict) -> None:
    """c2ir (this project's default) against c2ir_paper (the paper's feature deviations) on this run, and what
    each C2IR fit chose on proxy outliers (results.json `c2ir_fit`)."""
    metrics, oods = res.get("metrics", {}), list(res["ood_sets"])
    if "c2ir" in metrics and "c2ir_paper" in metrics:
        page.text(f"AUROC and {fpr_label(res)} (%) of the project's default against the paper's method on this run; the difference "
                  "is what the logit term (and the choices made on proxy outliers) adds.")
        rows = []
        for m, name in (("auroc", "AUROC"), ("fpr95", fpr_label(res))):
            a = [float(metrics["c2ir"][o][m]) for o in oods]
            b = [float(metrics["c2ir_paper"][o][m]) for o in oods]
            rows += [[f"{name}: {label('c2ir')}", *[f"{v:.1f}" for v in a], f"{np.mean(a):.1f}"],
                     [f"{name}: {label('c2ir_paper')}", *[f"{v:.1f}" for v in b], f"{np.mean(b):.1f}"],
                     [f"{name}: difference", *[f"{x - y:+.1f}" for x, y in zip(a, b)], f"{np.mean(a) - np.mean(b):+.1f}"]]
        page.add(small_table(["", *oods, "mean"], rows))
    else:
        page.note("Add both c2ir and c2ir_paper to detectors= to see what the logit term adds on this run.")
    fits = res.get("c2ir_fit") or {}
    if not fits:
        page.note("What the C2IR fits chose is not available (results.json made before it was recorded).")
    for det, fit in fits.items():
        combo = f", {fit['combination']}" if fit.get("combination", "sum") != "sum" else ""
        term = ("no logit term" if fit.get("logit_score") == "none"
                else f"{fit['logit_score']} weight x{fit['logit_weight']:g}")
        chosen = f"ipm={fit['ipm']}{combo}, {term}"
        if not fit.get("criterion"):
            page.text(f"{label(det)}: {chosen} (as configured: nothing to choose).")
            continue
        held = "raw" if fit.get("criterion_reference") == "raw" else "softened"
        page.text(f"{label(det)}: {chosen}, chosen without data: the candidate whose {held} held-back impressions are "
                  "best separated from proxy outliers made from them (mean AUROC %, both folds).")
        def row(c: dict) -> str:   # results.json written before `combination` existed: sum
            return c["ipm"] + ("" if c.get("combination", "sum") == "sum" else f" ({c['combination']})")
        rows = list(dict.fromkeys(row(c) for c in fit["criterion"]))
        weights = list(dict.fromkeys(c["logit_weight"] for c in fit["criterion"]))
        crit = {(row(c), c["logit_weight"]): c["criterion"] for c in fit["criterion"]}
        chosen_row = row({"ipm": fit["ipm"], "combination": fit.get("combination", "sum")})
        # results.json written before blurred_tolerance existed: every candidate competed
        out = {(row(c), c["logit_weight"]) for c in fit["criterion"] if not c.get("eligible", True)}
        if fit.get("tolerance_fell_back"):
            page.note(f"No candidate kept its AUROC against the blurred proxy within {fit.get('blurred_tolerance'):g} "
                      "points of its IPM's deviations alone (blurred_tolerance), so all of them competed.")
        def cell(r: str, w: float) -> str:
            if (r, w) not in crit:
                return ""
            return (("*" if (r, w) == (chosen_row, fit["logit_weight"]) else "") + f"{crit[r, w]:.1f}"
                    + (" -" if (r, w) in out else ""))
        page.add(small_table(["ipm \\ weight", *[f"x{w:g}" for w in weights]],
                             [[r, *[cell(r, w) for w in weights]] for r in rows]))
        if out:
            page.text(f"* chosen; - not a candidate: its AUROC against the blurred proxy fell more than "
                      f"{fit.get('blurred_tolerance'):g} points (blurred_tolerance) below its IPM's deviations alone, "
                      "so the logit term had drowned what the deviations see.")


def summary_values(result: dict) -> dict[str, dict[str, dict[str, float]]]:
    """{column: {detector: {auroc, fpr95}}}: near and far means when the run has both groups, else the mean."""
    groups = grouped_sets(result)
    cols = {f"{g}-OOD mean": sets for g, sets in groups.items()} if len(groups) == 2 else {"mean": result["ood_sets"]}
    return {c: {d: {m: mean_over(result["metrics"][d], sets, m) for m in ("auroc", "fpr95")} for d in result["metrics"]}
            for c, sets in cols.items()}


def _summary_section(page: Page, res: dict) -> None:
    access = {d: detector_group(d, res.get("access", {}).get(d, "")) for d in res["metrics"]}
    values = summary_values(res)
    page.text("Mean AUROC and " + fpr_label(res) + " per detector (" + " and ".join(values) + " over the OOD sets, "
              "unweighted), best mean AUROC first; colour: C2IR, other data-free detectors (model and impressions "
              "only), full access (real ID training data). The tables below hold every set and metric.")
    page.figure("summary", lambda: plots.summary_figure(values, access, fpr_label(res)))


def published_label(arch: str) -> str:
    """`published, ResNet-18, not this model`: what the published rows are, in the words the page uses."""
    pretty = {"ResNet18": "ResNet-18", "ResNet50": "ResNet-50"}.get(arch, arch)
    return f"published, {pretty}, not this model"


def _published_section(page: Page, res: dict, benchmark: str) -> None:
    """This run's near/far AUROC above OpenOOD's published rows for the benchmark, in one table, apart."""
    from c2ir import published

    rows = published.rows(benchmark)
    if not rows:
        page.note(f"No published rows for report.published={benchmark}; known: {', '.join(published.benchmarks())}.")
        return
    groups = grouped_sets(res)
    page.add(f'<h3 id="published">{esc("Where this run stands: measured rows, then OpenOOD v1.5 published rows")}</h3>')
    if len(groups) != 2:
        page.note("This run has no near/far groups (ood.<set>.group), so its rows cannot be set beside the published "
                  "near-OOD / far-OOD AUROC.")
        return
    where = published.commits().get(benchmark, "")
    page.text(f"Near-/far-OOD AUROC (%, unweighted mean over the sets, as OpenOOD). Published rows: "
              f"{published.REPOSITORY} {where}, post-hoc methods on OpenOOD's cross-entropy model; "
              f"mean ± std over OpenOOD's runs where it gives one. They are another model than this run's.")
    acc = f"{100 * res['id_accuracy']:.2f}"
    near = {d: mean_over(res["metrics"][d], groups["near"], "auroc") for d in res["metrics"]}
    body = [f'<tr class="group"><td colspan="5">{esc("measured, this run")}</td></tr>']
    for d in sorted(near, key=lambda d: -near[d]):  # each block by near-OOD AUROC, best first
        body.append(f'<tr><td class="name">{esc(d)}</td><td>{near[d]:.2f}</td>'
                    f'<td>{mean_over(res["metrics"][d], groups["far"], "auroc"):.2f}</td><td>{esc(acc)}</td>'
                    f'<td class="name">{esc(detector_group(d, res.get("access", {}).get(d, "")))}</td></tr>')
    for arch in dict.fromkeys(r.arch for r in rows):
        body.append(f'<tr class="group published"><td colspan="5">{esc(published_label(arch))}</td></tr>')
        for r in sorted((r for r in rows if r.arch == arch), key=lambda r: -r.near_auroc):
            acc_cell = "" if r.id_accuracy is None else f"{r.id_accuracy:.2f}"
            cells = [f"{v:.2f}" + (f" ± {sd}" if sd else "") for v, sd in ((r.near_auroc, r.near_std),
                                                                            (r.far_auroc, r.far_std))]
            body.append(f'<tr class="published"><td class="name">{esc(r.method)}</td><td>{esc(cells[0])}</td>'
                        f'<td>{esc(cells[1])}</td><td>{esc(acc_cell)}</td><td class="name">{esc(r.source)}</td></tr>')
    head = ('<tr><th class="name">detector / method</th><th>near-OOD AUROC</th><th>far-OOD AUROC</th>'
            '<th>ID accuracy</th><th class="name">group / source</th></tr>')
    page.add(f'<div class="scroll"><table>{head}{"".join(body)}</table></div>')


def _impressions_section(page: Page, inp: RunInputs) -> None:
    imp, summary = inp.impressions, inp.synth_summary or {}
    shares = summary.get("per_class_target_share")
    if "target_share" in summary:
        page.text(f"{summary.get('count', '?')} impressions, {100 * summary['target_share']:.1f}% assigned by the model "
                  "to their target class.")
    if imp is not None:
        k = len(shares) if shares else int(np.max(imp["targets"])) + 1
        if k > 20:
            page.note(f"The grid shows the first 20 of {k} classes; the table below lists every class.")
        page.figure("impressions grid", lambda: plots.labelled_grid(imp["images"], imp["targets"], imp["predicted"], k))
    else:
        page.note("Impressions not available (synthesis artifact not found in the cache).")
    for start in range(0, len(shares or []), 25):  # rows of 25 classes keep 100-class sets on screen
        chunk = range(start, min(start + 25, len(shares)))
        page.add(small_table(["class", *[str(c) for c in chunk]], [["on target %", *[f"{100 * shares[c]:.0f}" for c in chunk]]]))


def _layers_section(page: Page, res: dict) -> None:
    w = res.get("layer_weights") or {}
    if w.get("layers"):
        page.text(f"MGI method in use: {w.get('method')}. Weights are normalised to sum to 1.")
        by_method = w.get("weights_by_method") or {w.get("method", "weights"): w["weights"]}
        page.figure("MGI layer weights", lambda: plots.layer_weights(w["layers"], by_method, str(w.get("method"))))
    else:
        page.note("MGI layer weights not available in results.json.")
    per = res.get("layer_auroc")
    if not per:
        page.note("Per-layer AUROC not available (results.json from an evaluate artifact made before it was recorded, "
                  "or no C2IR detector in this run).")
        return
    weights = w.get("weights") if w.get("layers") else None
    for det, rec in per.items():
        layers, aur = rec["layers"], rec["auroc"]
        page.add(f"<h3>{esc(det)}</h3>")
        page.text("AUROC of each layer's deviation on its own (before normalisation and weighting): the evidence "
                  "behind which layers C2IR should trust.")
        lw = weights if weights is not None and len(weights) == len(layers) else None
        page.figure(f"per-layer AUROC ({det})", lambda l=layers, a=aur, ww=lw: plots.layer_auroc(l, a, ww))
        header = ["layer", *aur, *(["MGI weight"] if lw is not None else [])]
        rows = [[layer, *[f"{aur[o][i]:.1f}" for o in aur], *([f"{lw[i]:.3f}"] if lw is not None else [])]
                for i, layer in enumerate(layers)]
        combined = res.get("metrics", {}).get(det)
        if combined:
            rows.append([f"{det} score (all layers combined)",
                         *[f"{combined[o]['auroc']:.1f}" if o in combined else "-" for o in aur],
                         *([""] if lw is not None else [])])
        page.add(small_table(header, rows))


def write_page(path: Path, page: Page, subtitle_html: str = "") -> Path:
    atomic_write_bytes(path, page.render(subtitle_html).encode("utf-8"))
    return path


def write_run_report(directory: Path, inp: RunInputs) -> Path | None:
    """Write `report.html` (and the per-figure PNGs); returns None, with a warning, if the page itself fails."""
    try:
        histograms = HistogramPNGs(inp, FigureCache(inp.figure_cache))
        page = run_page(inp, directory, histograms)
        _save_detector_histograms(directory, inp, histograms)
        stamp = f'<p class="meta">Written {esc(time.strftime("%Y-%m-%d %H:%M:%S"))} in {esc(directory)}</p>'
        path = write_page(directory / "report.html", page, stamp)
    except Exception as exc:  # the tables are already written; the page is a view of them
        log.warning("report: report.html not written (%s: %s); results.md/csv/json are complete",
                    type(exc).__name__, exc)
        return None
    log.info("report page: %s", path)
    return path


class HistogramPNGs:
    """The score-histogram panel of the page and the per-detector `hist_<det>.png` files, all cut from one
    rendering of the panel figure (`plots.panel_pngs`), each cached in the run's figure cache."""

    def __init__(self, inp: RunInputs, cache: FigureCache):
        self.inp, self.cache = inp, cache
        self.dets = [d for d in ordered_detectors(inp.result) if inp.scores and d in inp.scores]
        self._pngs: dict[str, bytes] | None = None

    def _all(self) -> dict[str, bytes]:
        if self._pngs is not None:
            return self._pngs
        names = ["score histograms", *(f"hist_{d}" for d in self.dets)]
        found = {n: self.cache.get(n) for n in names}
        if any(v is None for v in found.values()):
            res = self.inp.result
            fig = plots.histogram_panels({d: self.inp.scores[d] for d in self.dets}, res["id_set"], res["ood_sets"])
            panel, per = plots.panel_pngs(fig, self.dets)
            found = {"score histograms": panel, **{f"hist_{d}": png for d, png in per.items()}}
            for n, png in found.items():
                self.cache.put(n, png)
        self._pngs = found
        return found

    def panel(self) -> bytes:
        return self._all()["score histograms"]

    def detector(self, det: str) -> bytes:
        return self._all()[f"hist_{det}"]


def _save_detector_histograms(directory: Path, inp: RunInputs, histograms: HistogramPNGs) -> None:
    """hist_<detector>.png, one per detector (kept for scripts that read them)."""
    if inp.scores is None:
        return
    try:
        for det in histograms.dets:
            plots.save_png(histograms.detector(det), directory / f"hist_{safe_filename(det)}.png")
    except Exception as exc:
        log.warning("report: could not draw the hist_<detector>.png files (%s: %s)", type(exc).__name__, exc)


# ----------------------------------------------------------------------------- sweep page

@dataclass
class SweepRun:
    overrides: dict[str, str]
    result: dict
    path: Path


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    """Hydra override strings (`key=value`, `+key=value`) -> {key: value}."""
    out = {}
    for line in lines:
        if "=" not in str(line):
            continue
        key, value = str(line).split("=", 1)
        out[key.lstrip("+~")] = value
    return out


def load_sweep(folder: Path) -> list[SweepRun]:
    """Every run under a multirun folder that has a results table, with its Hydra overrides."""
    import yaml  # PyYAML ships with omegaconf

    from c2ir.report import rows as report_rows

    runs = []
    for path in sorted(folder.rglob("results.json")):
        try:  # the same shape check as the sweep table (report.rows), so both skip the same runs
            result = json.loads(path.read_text())
            report_rows(result)
        except Exception as exc:  # noqa: BLE001 - bad JSON and wrong shape alike
            log.warning("sweep report: skipping %s (%s)", path, type(exc).__name__)
            continue
        ov = path.parent / ".hydra" / "overrides.yaml"
        lines = (yaml.safe_load(ov.read_text()) or []) if ov.is_file() else []
        runs.append(SweepRun(parse_overrides(lines), result, path.parent))
    return runs


def mean_over_oods(result: dict, det: str, metric: str) -> float:
    per = result["metrics"][det]
    return float(np.mean([per[o][metric] for o in result["ood_sets"]]))


def swept_parameters(runs: Sequence[SweepRun]) -> list[str]:
    """Override keys (other than seeds) whose value differs between runs, in first-seen order."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.overrides if k not in keys and k not in SEED_KEYS]
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def sort_values(values: set[str]) -> list[str]:
    vals = [v for v in values if v is not None]
    return sorted(vals, key=float) if all(plots._is_number(v) for v in vals) else sorted(vals)


def setting_of(run: SweepRun, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={run.overrides.get(k, '(default)')}" for k in keys)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def sweep_table(runs: Sequence[SweepRun], swept: Sequence[str], metric: str, title: str | None = None) -> str:
    """Detectors x settings: mean +- std over seeds of the metric (mean over OOD sets); best per column bold."""
    settings: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, int] = defaultdict(int)
    values: dict[str, dict[str, str]] = {}
    for r in runs:
        s = setting_of(r, swept) or "(all runs)"
        counts[s] += 1
        values[s] = {k: r.overrides.get(k, "(default)") for k in swept}
        for det in r.result["metrics"]:
            settings[s][det].append(mean_over_oods(r.result, det, metric))
    dets = sorted({d for per in settings.values() for d in per}, key=lambda d: (not d.startswith("c2ir"), c2ir_rank(d), d))
    cols = list(settings)
    stats = {s: {d: mean_std(v) for d, v in settings[s].items()} for s in cols}
    best = {s: best_marks({d: m for d, (m, _) in stats[s].items()}, metric) for s in cols}
    # one header row per swept parameter (its values), then the number of runs: narrow columns
    head = "".join(f'<tr><th class="name">{esc(k)}</th>' + "".join(f"<th>{esc(values[c][k])}</th>" for c in cols)
                   + "</tr>" for k in swept)
    head += ('<tr><th class="name">detector \\ runs</th>' + "".join(f"<th>{counts[c]}</th>" for c in cols) + "</tr>")
    body = []
    for d in dets:
        cells = []
        for s in cols:
            if d not in stats[s]:
                cells.append("<td>-</td>")
                continue
            m, sd = stats[s][d]
            cells.append(f'<td{" class=best" if d in best[s] else ""}>{m:.1f} &plusmn; {sd:.1f}</td>')
        body.append(f'<tr><td class="name">{esc(label(d))}</td>{"".join(cells)}</tr>')
    arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
    return (f"<h3>{esc(title or METRIC_TITLES[metric])} ({arrow})</h3><div class=\"scroll\"><table>{head}{''.join(body)}"
            "</table></div>")


def sweep_panels_data(runs: Sequence[SweepRun], param: str, others: Sequence[str], metrics: Sequence[str]):
    """{title (setting of the other swept params): {metric: {detector: {value: (mean, std over seeds)}}}}."""
    raw: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for r in runs:
        title, value = setting_of(r, others), r.overrides.get(param)
        if value is None:
            continue
        for metric in metrics:
            for det in r.result["metrics"]:
                raw[title][metric][det][value].append(mean_over_oods(r.result, det, metric))
    return {t: {m: {d: {v: mean_std(x) for v, x in per_v.items()} for d, per_v in per_d.items()}
                for m, per_d in per_m.items()} for t, per_m in raw.items()}


def cost_points(runs: Sequence[SweepRun], swept: Sequence[str]) -> tuple[dict[str, list[dict]], list[str], list[list[str]]]:
    """Per detector, one point per setting: synthesis cost (forward+backward equivalents, from each run's
    results.json `synthesis`), AUROC and FPR95 mean +- std over seeds; and the header and rows of the table."""
    by_setting: dict[str, list[SweepRun]] = defaultdict(list)
    for r in runs:
        if isinstance(r.result.get("synthesis"), dict) and "cost" in r.result["synthesis"]:
            by_setting[setting_of(r, swept) or "(all runs)"].append(r)
    dets = sorted({d for group in by_setting.values() for g in group for d in g.result["metrics"]},
                  key=lambda d: (not d.startswith("c2ir"), d))
    points: dict[str, list[dict]] = defaultdict(list)
    rows = []
    for setting, group in sorted(by_setting.items(), key=lambda kv: np.mean([g.result["synthesis"]["cost"] for g in kv[1]])):
        cost = float(np.mean([g.result["synthesis"]["cost"] for g in group]))
        secs = [float(x) for x in (g.result["synthesis"].get("seconds") for g in group) if x is not None]
        cells = [setting, f"{cost:,.0f}", f"{np.mean(secs):.1f}" if secs else "-"]
        for det in dets:
            have = [g.result for g in group if det in g.result["metrics"]]
            if not have:
                cells.append("-")
                continue
            au = mean_std([mean_over_oods(res, det, "auroc") for res in have])
            fp = mean_std([mean_over_oods(res, det, "fpr95") for res in have])
            points[det].append({"cost": cost, "auroc": au[0], "auroc_std": au[1], "fpr95": fp[0], "fpr95_std": fp[1],
                                "label": setting})
            cells.append(f"{au[0]:.1f} ± {au[1]:.1f} / {fp[0]:.1f}")
        rows.append(cells)
    return dict(points), ["setting", "cost (fwd+bwd)", "wall s", *(f"{d} AUROC / FPR95" for d in dets)], rows


def _cost_section(page: Page, runs: Sequence[SweepRun], swept: Sequence[str]) -> None:
    """AUROC and FPR95 against synthesis cost, when the sweep varies the synthesis (issue 20)."""
    points, header, rows = cost_points(runs, swept)
    if len({round(p["cost"], 3) for pts in points.values() for p in pts}) < 2:
        return
    page.section("cost", "Quality against synthesis cost")
    page.text("Cost: forward+backward equivalents of the synthesis (one image through the model and back at full "
              "resolution; a half-resolution iteration counts 1/4); wall seconds as measured by each run's build "
              "(they depend on the machine's load). Line: the Pareto-optimal settings.")
    page.figure("quality vs synthesis cost", lambda: plots.pareto_figure(points, "synthesis cost (fwd+bwd equivalents)"))
    page.add(small_table(header, rows))


def sweep_page(folder: Path, runs: Sequence[SweepRun], max_panels: int = 8) -> Page:
    page = Page("c2ir sweep report")
    swept = swept_parameters(runs)
    seeds = sorted({r.overrides.get(k) for r in runs for k in SEED_KEYS if k in r.overrides})
    page.section("table", "Aggregated results")
    page.text(f"{len(runs)} runs under {folder}. Swept: {', '.join(swept) if swept else 'nothing but the seed'}"
              + (f"; seeds: {', '.join(seeds)}" if seeds else "") + ". Each value: mean over the OOD sets of a run, "
              "then mean ± std over the runs (seeds) of a setting.")
    text, fpr_title = sweep_convention({fpr_positive(r.result) for r in runs})
    page.text(text + " Best value per column in bold on green.")
    for metric in ("auroc", "fpr95"):
        page.add(sweep_table(runs, swept, metric, fpr_title if metric == "fpr95" else None))
    page.section("plots", "Metric against each swept parameter")
    if not swept:
        page.note("No parameter varies across these runs (apart from the seed): nothing to plot against.")
    for param in swept:
        others = [k for k in swept if k != param]
        data = sweep_panels_data(runs, param, others, ("auroc", "fpr95"))
        if len(data) > max_panels:
            page.note(f"{param}: {len(data)} settings of the other swept parameters; showing the first {max_panels}.")
            data = dict(list(data.items())[:max_panels])
        values = sort_values({r.overrides.get(param) for r in runs})
        page.add(f"<h3>{esc(param)}</h3>")
        page.figure(f"metrics vs {param}", lambda p=param, v=values, d=data: plots.sweep_panels(p, v, d))
    _cost_section(page, runs, swept)
    page.section("runs", "Runs")
    page.add(small_table(["run folder", "overrides"],
                         [[str(r.path.relative_to(folder)) if r.path.is_relative_to(folder) else str(r.path),
                           " ".join(f"{k}={v}" for k, v in r.overrides.items())] for r in runs]))
    return page


def write_sweep_report(folder: Path) -> Path | None:
    """`sweep_report.html` in the multirun folder; a failure is a warning (the Markdown table is already written)."""
    try:
        runs = load_sweep(folder)
        if not runs:
            return None
        path = write_page(folder / "sweep_report.html", sweep_page(folder, runs),
                          f'<p class="meta">Written {esc(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>')
    except Exception as exc:
        log.warning("report: sweep_report.html not written (%s: %s); sweep_results.md is complete",
                    type(exc).__name__, exc)
        return None
    log.info("sweep page: %s", path)
    return path
