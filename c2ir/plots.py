"""Matplotlib figures for the reports: each function takes plain arrays and returns a Figure.

Why a module of its own: the figures are shared by the PNG files of a run, the HTML page
(`c2ir.report_html`) and the sweep page, and a figure that fails must not take the
tables with it, so callers wrap each one (see `report_html.Page.figure`). Nothing here
reads artifacts or writes files except `save_png`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from c2ir.metrics import roc_points

VERSION = 3  # bump when a figure changes: cached report figures are keyed by it (2: the summary figure; 3: hist_<det> cut from the panels)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_styles(names: Sequence[str]) -> dict[str, dict]:
    """A distinct (colour, line style) per name: 10 colours x 4 styles = 40 before any repeat.

    Colour varies fastest, so neighbours in the legend differ in colour; the line style
    separates the 11th to 40th. `c2ir*` detectors are drawn thicker so the method stands out.
    """
    combos = list(itertools.product(LINESTYLES, COLORS))
    out = {}
    for i, name in enumerate(names):
        ls, color = combos[i % len(combos)]
        out[name] = {"color": color, "linestyle": ls, "lw": 2.4 if name.startswith("c2ir") else 1.3}
    return out


def to_png(fig, dpi: int = 90) -> bytes:
    """PNG bytes of a figure; the figure is closed (figures are not reused)."""
    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_png(png: bytes, path: Path) -> None:
    from c2ir.cache import atomic_write_bytes

    atomic_write_bytes(path, png)


def roc_figure(scores: Mapping[str, Mapping[str, np.ndarray]], id_name: str, ood: str,
               aurocs: Mapping[str, float] | None = None):
    """ROC of every detector for one OOD set; legend sorted by AUROC (shown), colour + line style per detector."""
    plt = _plt()
    names = list(scores)
    styles = line_styles(names)
    aurocs = dict(aurocs or {})
    order = sorted(names, key=lambda d: -aurocs.get(d, -1.0))
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for det in order:
        fpr, tpr, _ = roc_points(scores[det][id_name], scores[det][ood])
        label = f"{det} ({aurocs[det]:.1f})" if det in aurocs else det
        ax.plot(fpr, tpr, label=label, **styles[det])
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, linestyle=":")
    ax.set(xlabel="FPR (OOD accepted as ID)", ylabel="TPR (ID accepted)", title=f"ROC: {id_name} vs {ood}",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(title="detector (AUROC %)", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              ncol=1 if len(names) <= 20 else 2, frameon=False)
    return fig


def _bins(arrays: Sequence[np.ndarray]) -> np.ndarray:
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    return np.linspace(lo, hi if hi > lo else lo + 1, 50)


def histogram_panels(scores: Mapping[str, Mapping[str, np.ndarray]], id_name: str, oods: Sequence[str],
                     cols: int = 4):
    """Small multiples: one panel per detector, ID vs each OOD set (step histograms, shared legend)."""
    plt = _plt()
    dets = list(scores)
    rows = max(1, -(-len(dets) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False)
    sets = [id_name, *oods]
    colors = {s: ("black" if s == id_name else COLORS[i % len(COLORS)]) for i, s in enumerate(sets)}
    for ax, det in zip(axes.flat, dets):
        per = scores[det]
        bins = _bins([per[s] for s in sets])
        for s in sets:
            v = np.clip(per[s][np.isfinite(per[s])], bins[0], bins[-1])
            ax.hist(v, bins=bins, histtype="step", density=True, color=colors[s],
                    lw=1.8 if s == id_name else 1.1, label=s)
        ax.set_title(det, fontsize=9)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.ticklabel_format(axis="x", useOffset=True, style="sci", scilimits=(-3, 4))
        ax.set_yticks([])
    for ax in list(axes.flat)[len(dets):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(sets), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.supxlabel("score (higher = more OOD); x range: 0.5-99.5 percentile of all sets", fontsize=8)
    # fixed margins in inches instead of tight_layout, which measures every tick label of every panel
    # (about as long as drawing the figure again)
    height = 2.4 * rows
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.55 / height, top=1 - 0.5 / height, wspace=0.12, hspace=0.45)
    return fig


ACCESS_COLORS = {"C2IR": "#d62728", "data-free": "#1f77b4", "full access": "#7f7f7f"}  # the page's detector groups


def summary_figure(values: Mapping[str, Mapping[str, Mapping[str, float]]], access: Mapping[str, str],
                   fpr_label: str = "FPR95"):
    """The page's first figure: per detector, mean AUROC and FPR95 per column group (near / far, or all sets).

    `values[column][detector] = {"auroc": ..., "fpr95": ...}`; one horizontal-bar panel per (metric, column),
    every panel in one detector order (best mean AUROC over the columns first), bars coloured by the
    detector's access group (`access[detector]`: C2IR / data-free / full access), value at each bar's end.
    """
    plt = _plt()
    cols = list(values)
    dets = sorted(values[cols[0]], key=lambda d: -float(np.mean([values[c][d]["auroc"] for c in cols])))
    panels = [("auroc", c) for c in cols] + [("fpr95", c) for c in cols]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 1.2, 0.28 * len(dets) + 1.3),
                             sharey=True, squeeze=False)
    y = np.arange(len(dets))[::-1]
    colors = [ACCESS_COLORS.get(access.get(d, "data-free"), "#1f77b4") for d in dets]
    for ax, (metric, col) in zip(axes[0], panels):
        v = np.array([values[col][d][metric] for d in dets], dtype=np.float64)
        ax.barh(y, v, color=colors, height=0.7)
        for yi, vi in zip(y, v):
            ax.text(vi, yi, f" {vi:.1f}", va="center", fontsize=6.5)
        title = "AUROC (higher is better)" if metric == "auroc" else f"{fpr_label} (lower is better)"
        ax.set_title(f"{col}\n{title}", fontsize=8.5)
        ax.set_xlim(0, 112)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, dets, fontsize=7.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ACCESS_COLORS.values()]
    fig.legend(handles, list(ACCESS_COLORS), loc="lower center", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def panel_pngs(fig, names: Sequence[str], dpi: int = 90) -> tuple[bytes, dict[str, bytes]]:
    """The PNG of a small-multiples figure and, from the same single rendering, one PNG per panel (the
    figure's i-th axes, with its title and ticks, under the figure legend): drawing each panel as a
    figure of its own cost a full figure rendering per panel (most of a run page's drawing time).
    `names[i]` names the i-th axes; the figure is closed."""
    plt = _plt()
    try:
        fig.set_dpi(dpi)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        height = rgba.shape[0]

        def crop(bbox, pad: int = 4) -> np.ndarray:
            x0, x1 = max(0, int(bbox.x0) - pad), min(rgba.shape[1], int(np.ceil(bbox.x1)) + pad)
            y0, y1 = max(0, height - int(np.ceil(bbox.y1)) - pad), min(height, height - int(bbox.y0) + pad)
            return rgba[y0:y1, x0:x1, :3]

        legend = crop(fig.legends[0].get_window_extent(renderer)) if fig.legends else None
        per = {}
        for name, ax in zip(names, fig.axes):
            part = crop(ax.get_tightbbox(renderer))
            if legend is not None:
                width = max(part.shape[1], legend.shape[1])
                canvas = np.full((legend.shape[0] + part.shape[0], width, 3), 255, dtype=np.uint8)
                canvas[:legend.shape[0], :legend.shape[1]] = legend
                canvas[legend.shape[0]:, :part.shape[1]] = part
                part = canvas
            per[name] = _encode(part)
        return _encode(rgba[:, :, :3]), per
    finally:
        plt.close(fig)


def _encode(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="png")
    return buf.getvalue()


def labelled_grid(images: np.ndarray, targets: np.ndarray, predicted: np.ndarray, num_classes: int,
                  per_row: int = 10, max_classes: int = 20, pad: int = 2):
    """Impressions, one row per class, labelled with the class and its on-target share.

    An impression the model does not assign to its target gets a red frame. `images` is
    (N, C, H, W) in [0, 1]. Only the first `max_classes` classes are drawn (the page
    tabulates all shares).
    """
    plt = _plt()
    n, c, h, w = images.shape
    shown = min(num_classes, max_classes)
    cell_h, cell_w = h + 2 * pad, w + 2 * pad
    canvas = np.ones((shown * cell_h, per_row * cell_w, 3), dtype=np.float32)
    labels = []
    for k in range(shown):
        idx = np.flatnonzero(targets == k)
        share = float((predicted[idx] == k).mean()) if idx.size else float("nan")
        labels.append(f"class {k}: {100 * share:.0f}%")
        for j, i in enumerate(idx[:per_row]):
            y, x = k * cell_h, j * cell_w
            if predicted[i] != k:
                canvas[y:y + cell_h, x:x + cell_w] = (0.85, 0.1, 0.1)
            img = images[i].transpose(1, 2, 0)
            canvas[y + pad:y + pad + h, x + pad:x + pad + w] = img if c == 3 else np.repeat(img[:, :, :1], 3, axis=2)
    scale = max(0.25, 22.0 / max(cell_h, 1))
    fig, ax = plt.subplots(figsize=(min(14, 2 + per_row * cell_w * scale / 22), 0.6 + shown * cell_h * scale / 22 * 0.9))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([k * cell_h + cell_h / 2 for k in range(shown)], labels, fontsize=8)
    ax.set_xticks([])
    ax.set_title("impressions per target class (red frame: the model predicts another class)", fontsize=9)
    return fig


def synthesis_curves(curves: Mapping[str, np.ndarray], names: Sequence[str] = ("total", "ce", "bn", "tv")):
    """Loss curves per batch: one panel per loss term, one line per batch (log scale when positive)."""
    plt = _plt()
    present = [k for k in names if k in curves]
    fig, axes = plt.subplots(1, len(present), figsize=(3.6 * len(present), 3.0), squeeze=False)
    for ax, name in zip(axes[0], present):
        arr = np.atleast_2d(np.asarray(curves[name], dtype=np.float64))
        for b, row in enumerate(arr):
            ax.plot(np.arange(1, len(row) + 1), row, lw=1.0, color=COLORS[b % len(COLORS)],
                    alpha=0.9 if len(arr) <= 10 else 0.35, label=f"batch {b + 1}" if len(arr) <= 10 else None)
        finite = arr[np.isfinite(arr)]  # a batch stopped early is NaN-padded
        if finite.size and np.all(finite > 0) and finite.max() > 100 * finite.min():  # log only where it spans decades
            from matplotlib.ticker import NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())  # mathtext minor labels: slow and cluttered
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if 1 < len(np.atleast_2d(np.asarray(curves[present[0]]))) <= 10:
        axes[0][0].legend(fontsize=7)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.17, top=0.9, wspace=0.3)  # fixed: tight_layout costs a draw
    return fig


def layer_weights(layers: Sequence[str], by_method: Mapping[str, Sequence[float]], used: str):
    """Grouped bars: the MGI weight of each layer under each method; the method in use is labelled."""
    plt = _plt()
    methods = list(by_method)
    x = np.arange(len(layers))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(layers) + 2), 3.4))
    for i, m in enumerate(methods):
        ax.bar(x + i * width - 0.4 + width / 2, by_method[m], width, color=COLORS[i % len(COLORS)],
               edgecolor="black" if m == used else "none", label=f"{m} (used)" if m == used else m)
    ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("weight (sums to 1)")
    ax.set_title("MGI layer weights (gradients on the impressions)", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def layer_auroc(layers: Sequence[str], per_ood: Mapping[str, Sequence[float]], weights: Sequence[float] | None = None):
    """AUROC of each layer's deviation alone, one line per OOD set (and the MGI weights as bars behind)."""
    plt = _plt()
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(5.5, 0.7 * len(layers) + 3), 3.6))
    if weights is not None and len(weights) == len(layers):
        ax2 = ax.twinx()
        ax2.bar(x, weights, 0.5, color="0.85", label="MGI weight")
        ax2.set_ylabel("MGI weight", color="0.5", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
    for i, (ood, vals) in enumerate(per_ood.items()):
        ax.plot(x, vals, marker="o", color=COLORS[i % len(COLORS)], linestyle=LINESTYLES[(i // len(COLORS)) % 4],
                label=ood)
    ax.axhline(50, color="0.6", lw=0.8, linestyle=":")
    ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("AUROC % of the layer's deviation")
    ax.set_title("C2IR per-layer deviations: AUROC per OOD set", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.18, 1.0), frameon=False)
    return fig


def sweep_panels(param: str, values: Sequence[str], panels: Mapping[str, Mapping[str, Mapping[str, tuple[float, float]]]],
                 metrics: Sequence[str] = ("auroc", "fpr95")):
    """Metric vs the swept parameter's values, error bars = std over seeds, one line per detector.

    `panels[title][metric][detector][value] = (mean, std)`; one row of panels per title (a
    setting of the other swept parameters, "" when there are none), one column per metric.
    """
    plt = _plt()
    titles = list(panels)
    fig, axes = plt.subplots(len(titles), len(metrics), figsize=(5.2 * len(metrics) + 2, 3.4 * len(titles)),
                             squeeze=False)
    numeric = all(_is_number(v) for v in values)
    xs = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    dets = sorted({d for t in titles for m in metrics for d in panels[t].get(m, {})},
                  key=lambda d: (not d.startswith("c2ir"), d))
    styles = line_styles(dets)
    for r, title in enumerate(titles):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for det in dets:
                pts = panels[title].get(metric, {}).get(det, {})
                vs = [v for v in values if v in pts]
                if not vs:
                    continue
                ax.errorbar([xs[v] for v in vs], [pts[v][0] for v in vs], yerr=[pts[v][1] for v in vs], capsize=3,
                            marker="o", ms=3, label=det, **styles[det])
            if not numeric:
                ax.set_xticks(range(len(values)), values, rotation=20, fontsize=8)
            ax.set_xlabel(param)
            ax.set_ylabel(f"{metric} % (mean over OOD sets)")
            ax.set_title(title if title else f"{metric} vs {param}", fontsize=9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=7, frameon=False,
                   ncol=1 if len(dets) <= 20 else 2)
    fig.tight_layout()
    return fig


def pareto_figure(points: Mapping[str, Sequence[Mapping[str, float | str]]], cost_label: str = "synthesis cost"):
    """Quality against cost: AUROC and FPR95 (mean +- std over seeds) of each setting against its cost (log
    scale), one colour per series (a detector or a model), its Pareto-optimal settings joined by a line.

    `points[series]` = [{"cost", "auroc", "auroc_std", "fpr95", "fpr95_std", "label"}, ...]; a point whose
    label is `highlight` in the dict ({"highlight": True}) is drawn as a star (e.g. the default setting).
    """
    from c2ir.report import pareto_front

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.8))
    names = sorted(points, key=lambda d: (not d.startswith("c2ir"), d))
    styles = line_styles(names)
    for c, (metric, higher) in enumerate((("auroc", True), ("fpr95", False))):
        ax = axes[c]
        for name in names:
            pts = sorted(points[name], key=lambda p: float(p["cost"]))
            if not pts:
                continue
            xs = [float(p["cost"]) for p in pts]
            ys = [float(p[metric]) for p in pts]
            st = styles[name]
            ax.errorbar(xs, ys, yerr=[float(p.get(f"{metric}_std", 0.0)) for p in pts], fmt="o", ms=3, capsize=2,
                        color=st["color"], alpha=0.55)
            front = [i for i, ok in enumerate(pareto_front(xs, ys, higher)) if ok]
            ax.plot([xs[i] for i in front], [ys[i] for i in front], color=st["color"], linestyle=st["linestyle"],
                    lw=1.6, label=name)
            for p in pts:
                if p.get("highlight"):
                    ax.plot([float(p["cost"])], [float(p[metric])], marker="*", ms=11, color=st["color"],
                            markeredgecolor="black", linestyle="none")
                    ax.annotate(str(p.get("label", "")), (float(p["cost"]), float(p[metric])), fontsize=6,
                                xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(f"{metric} % (mean over OOD sets)")
        ax.set_title(f"{metric} vs cost ({'higher' if higher else 'lower'} is better; line: Pareto front)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _is_number(v: str) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
