"""The HTML report pages, on synthetic results (no run needed): complete, self-contained, robust."""

from __future__ import annotations

import json
import logging

import numpy as np

from c2ir import plots, report, report_html
from c2ir.report_html import RunInputs, write_run_report, write_sweep_report
from conftest import assert_self_contained

OODS = ["noise_a", "shuffled_b"]


def fake_result(dets: list[str], rng: np.random.Generator) -> tuple[dict, dict]:
    """A results.json-like dict and scores for `dets` (the last two are full-access)."""
    scores, metrics = {}, {}
    from c2ir.metrics import ood_metrics

    for i, d in enumerate(dets):
        per = {"digits-test": rng.normal(0, 1, 120)}
        for j, o in enumerate(OODS):
            per[o] = rng.normal(0.1 * i + j, 1, 90)
        scores[d] = per
        metrics[d] = {o: ood_metrics(per["digits-test"], per[o]) for o in OODS}
    access = {d: ("full access" if i >= len(dets) - 2 else "data-free") for i, d in enumerate(dets)}
    layers = ["act1", "act2", "act3"]
    result = {"id_set": "digits-test", "id_accuracy": 0.97, "ood_sets": OODS, "metrics": metrics, "access": access,
              "counts": {"digits-test": 120, **{o: 90 for o in OODS}},
              "layer_weights": {"method": "grad_abs", "layers": layers, "weights": [0.5, 0.3, 0.2],
                                "weights_by_method": {"grad_abs": [0.5, 0.3, 0.2], "uniform": [1 / 3] * 3}},
              "layer_auroc": {"c2ir": {"layers": layers, "auroc": {o: [90.0, 80.0, 70.0] for o in OODS}}}}
    return result, scores


def fake_inputs(n_dets: int = 3, seed: int = 0) -> RunInputs:
    rng = np.random.default_rng(seed)
    dets = ["c2ir", "c2ir_paper", *[f"det{i:02d}" for i in range(n_dets - 2)]]
    result, scores = fake_result(dets, rng)
    result["c2ir_fit"] = {"c2ir": {"ipm": "mean_standardized", "logit_score": "energy", "logit_weight": 1.0,
                                   "selected": True, "reference": 40,
                                   "criterion": [{"ipm": "mean_standardized", "logit_weight": w, "criterion": 90 - w}
                                                 for w in (0.0, 1.0)]}}
    targets = np.arange(40) % 4
    predicted = targets.copy()
    predicted[[1, 6]] = 0  # two impressions miss their target
    return RunInputs(result=result, scores=scores,
                     impressions={"images": rng.random((40, 1, 8, 8)).astype(np.float32), "targets": targets,
                                  "predicted": predicted},
                     curves={k: rng.random((2, 30)) + 0.1 for k in ("total", "ce", "bn", "tv", "l2")},
                     synth_summary={"count": 40, "target_share": 0.95, "per_class_target_share": [0.8, 0.9, 1.0, 1.0]},
                     config_yaml="seed: 0\nipm:\n  name: mean_l2\n", keys={"evaluate": "abc123", "synthesize": "def456"})


def test_line_styles_stay_distinct_for_many_detectors():
    names = [f"d{i}" for i in range(40)]
    styles = plots.line_styles(names)
    assert len({(s["color"], s["linestyle"]) for s in styles.values()}) == 40


def test_run_page_is_complete_and_self_contained(tmp_path):
    inp = fake_inputs(n_dets=8)
    path = write_run_report(tmp_path, inp)
    assert path == tmp_path / "report.html"
    page = path.read_text()
    assert_self_contained(page)
    for det in inp.result["metrics"]:
        assert f">{report.label(det)}<" in page.replace("&#x27;", "'"), det
    for name in [*OODS, "digits-test", "act1", "act3", "grad_abs", "abc123", "ipm:", "on target %"]:
        assert name in page, name
    for section in ("Results", "ROC curves", "Score histograms", "Impressions", "Synthesis loss curves",
                    "MGI weights and per-layer AUROC", "Resolved config", "Artifacts used"):
        assert section in page, section
    # the summary figure, ROC per OOD set, histograms, impressions, curves, MGI weights, per-layer AUROC
    assert page.count("data:image/png;base64,") == len(OODS) + 6
    assert page.index('id="summary"') < page.index('alt="summary"') < page.index('id="results"')  # it answers first
    assert 'class="note"' not in page
    for ood in OODS:
        assert (tmp_path / f"roc_{ood}.png").stat().st_size > 1000
    assert (tmp_path / "hist_c2ir.png").is_file()


def test_best_value_per_column_is_marked():
    result, _ = fake_result(["c2ir", "a", "full"], np.random.default_rng(1))
    for d, m in zip(["c2ir", "a", "full"], [70.0, 80.0, 90.0]):
        for o in OODS:
            result["metrics"][d][o]["auroc"] = m
    result["access"] = {"c2ir": "data-free", "a": "data-free", "full": "full access"}
    table = report_html.metric_table(result, "auroc")
    assert '<td class="best">90.0</td>' in table  # best overall (full access)
    assert '<td class="bestfree">80.0</td>' in table  # best data-free, underlined
    assert table.index(">C2IR<") < table.index(">data-free<") < table.index(">full access<")
    fpr = report_html.metric_table(result, "fpr95")
    assert "lower is better" in fpr


def test_a_failing_plot_is_a_warning_and_a_note(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("plot exploded")

    monkeypatch.setattr(plots, "roc_figure", broken)
    with caplog.at_level(logging.WARNING):
        path = write_run_report(tmp_path, fake_inputs())
    page = path.read_text()
    assert "plot exploded" in page and 'class="note"' in page
    assert "could not draw ROC" in caplog.text
    assert "Score histograms" in page and page.count("data:image/png") == 6  # everything else is still drawn


def test_missing_inputs_become_notes(tmp_path):
    inp = fake_inputs()
    bare = RunInputs(result={k: v for k, v in inp.result.items() if k not in ("layer_auroc", "layer_weights")})
    page = write_run_report(tmp_path, bare).read_text()
    for words in ("Scores not available", "Impressions not available", "loss curves not available",
                  "Per-layer AUROC not available", "MGI layer weights not available", "config is not available"):
        assert words in page, words


def test_run_page_failure_never_raises(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert write_run_report(tmp_path, RunInputs(result={"nothing": 1})) is None
    assert "report.html not written" in caplog.text
    assert not (tmp_path / "report.html").exists()


def _fake_sweep(root, settings):
    rng = np.random.default_rng(0)
    for i, overrides in enumerate(settings):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        result, _ = fake_result(["c2ir", "energy", "mahalanobis"], rng)
        (run / "results.json").write_text(json.dumps({**result, "rows": report.rows(result)}))


def test_sweep_page_plots_each_swept_parameter(tmp_path):
    settings = [[f"ipm={ipm}", f"synth.iterations={it}", f"seed={s}"]
                for ipm in ("mean_l1", "mean_l2") for it in (50, 100, 200) for s in (0, 1)]
    _fake_sweep(tmp_path, settings)
    runs = report_html.load_sweep(tmp_path)
    assert len(runs) == 12
    assert report_html.swept_parameters(runs) == ["ipm", "synth.iterations"]
    data = report_html.sweep_panels_data(runs, "synth.iterations", ["ipm"], ("auroc",))
    assert set(data) == {"ipm=mean_l1", "ipm=mean_l2"}
    mean, std = data["ipm=mean_l1"]["auroc"]["c2ir"]["100"]
    assert std >= 0 and 0 <= mean <= 100
    page = write_sweep_report(tmp_path).read_text()
    assert_self_contained(page)
    assert page.count("data:image/png;base64,") == 2  # one figure per swept parameter
    for needle in ("c2ir", "energy", "mahalanobis", "<th>mean_l1</th>", "<th>200</th>", "runs</th><th>2</th>", "±"):
        assert needle in page, needle


def test_sweep_of_seeds_only_says_so(tmp_path):
    _fake_sweep(tmp_path, [["seed=0"], ["seed=1"]])
    page = write_sweep_report(tmp_path).read_text()
    assert "nothing but the seed" in page and "runs</th><th>2</th>" in page


def test_figures_are_cached_and_failures_are_not(tmp_path, monkeypatch):
    inp = fake_inputs()
    inp.figure_cache = tmp_path / "figs"
    calls = []
    real_roc, real_hist = plots.roc_figure, plots.histogram_panels

    def counting(*args, **kwargs):
        calls.append(1)
        return real_roc(*args, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("plot exploded")

    monkeypatch.setattr(plots, "histogram_panels", broken)
    monkeypatch.setattr(plots, "roc_figure", counting)
    first = write_run_report(tmp_path / "a", inp).read_text()
    assert len(calls) == len(OODS) and "plot exploded" in first
    monkeypatch.setattr(plots, "histogram_panels", real_hist)
    second = write_run_report(tmp_path / "b", inp).read_text()
    assert len(calls) == len(OODS), "ROC curves were redrawn instead of read from the figure cache"
    assert "plot exploded" not in second and second.count("data:image/png") == len(OODS) + 6  # retried, not cached
    assert (tmp_path / "b" / f"roc_{OODS[0]}.png").read_bytes() == (tmp_path / "a" / f"roc_{OODS[0]}.png").read_bytes()


def test_impressions_grid_labels_classes_and_frames_misses_in_red():
    rng = np.random.default_rng(0)
    targets = np.arange(60) % 30
    predicted = targets.copy()
    predicted[0] = 5  # the first impression of class 0 misses its target
    fig = plots.labelled_grid(rng.random((60, 1, 4, 4)).astype(np.float32), targets, predicted, 30, per_row=2)  # grey: red only from frames
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 20 and labels[0] == "class 0: 50%" and labels[1] == "class 1: 100%"
    canvas = np.asarray(ax.images[0].get_array())
    red = (canvas[..., 0] > 0.8) & (canvas[..., 1] < 0.2) & (canvas[..., 2] < 0.2)
    cell = 4 + 2 * 2
    assert red[:cell, :cell].any() and not red[:, cell:].any() and not red[cell:, :].any()
    plots.to_png(fig)


def test_run_page_shows_what_the_logit_term_adds():
    rng = np.random.default_rng(3)
    result, _ = fake_result(["c2ir", "c2ir_paper", "energy", "knn", "mahalanobis"], rng)
    crit = [{"ipm": i, "logit_weight": w, "criterion": 80.0 + w + (i == "mahalanobis")}
            for i in ("mean_standardized", "mahalanobis") for w in (0.0, 4.0)]
    result["c2ir_fit"] = {"c2ir": {"ipm": "mahalanobis", "logit_score": "energy", "logit_weight": 4.0, "selected": True,
                                   "criterion": crit, "reference": 40},
                          "c2ir_paper": {"ipm": "mean_standardized", "logit_score": "none", "logit_weight": 0.0,
                                         "selected": False, "criterion": [], "reference": 40}}
    html = report_html.run_page(RunInputs(result=result)).render()
    m = result["metrics"]
    diff = m["c2ir"]["noise_a"]["auroc"] - m["c2ir_paper"]["noise_a"]["auroc"]
    assert f"<td>{diff:+.1f}</td>" in html and "AUROC: difference" in html
    assert "C2IR (paper: feature deviations)" in html and "C2IR + Energy (this project&#x27;s default)" in html
    assert "ipm=mahalanobis, energy weight x4" in html and "<td>*85.0</td>" in html   # the chosen cell is starred
    assert "ipm=mean_standardized, no logit term (as configured" in html and "none weight" not in html
    assert "whose softened held-back impressions" in html
    result["c2ir_fit"]["c2ir"]["criterion_reference"] = "raw"   # the page names the criterion's ID side
    assert "whose raw held-back impressions" in report_html.run_page(RunInputs(result=result)).render()
    assert "blurred_tolerance" not in html   # written before the limit existed: every candidate competed
    for c in crit:   # a fit with the limit: the candidates beyond it are marked and the limit is named
        c.update(blurred_auroc=99.0 - 10 * c["logit_weight"], eligible=c["logit_weight"] == 0.0)
    result["c2ir_fit"]["c2ir"].update(logit_weight=0.0, blurred_tolerance=2.0)
    limited = report_html.run_page(RunInputs(result=result)).render()
    assert "<td>*81.0</td>" in limited and "<td>85.0 -</td>" in limited and "<td>84.0 -</td>" in limited
    assert "more than 2 points (blurred_tolerance)" in limited and "so all of them competed" not in limited
    result["c2ir_fit"]["c2ir"]["tolerance_fell_back"] = True
    assert "so all of them competed" in report_html.run_page(RunInputs(result=result)).render()
    bare = report_html.run_page(RunInputs(result=fake_result(["c2ir", "energy", "knn", "maha"], rng)[0])).render()
    assert "Add both c2ir and c2ir_paper" in bare and "made before it was recorded" in bare


def test_pareto_front_keeps_the_settings_worth_their_cost():
    costs, auroc = [1.0, 2.0, 3.0, 4.0, 4.0], [80.0, 85.0, 84.0, 90.0, 89.0]
    assert report.pareto_front(costs, auroc) == [True, True, False, True, False]
    fpr = [50.0, 40.0, 45.0, 30.0, 30.0]  # lower is better; equal cost and value: both kept
    assert report.pareto_front(costs, fpr, higher_is_better=False) == [True, True, False, True, True]


def test_sweep_page_plots_quality_against_synthesis_cost(tmp_path):
    """A sweep over synthesis settings: a section with AUROC/FPR95 against the cost each run recorded."""
    settings = [[f"synth.iterations={it}", f"seed={s}"] for it in (20, 300) for s in (0, 1)]
    _fake_sweep(tmp_path, settings)
    for run in sorted(p for p in tmp_path.iterdir() if p.is_dir()):
        res = json.loads((run / "results.json").read_text())
        it = int((run / ".hydra" / "overrides.yaml").read_text().split("synth.iterations=")[1].split()[0])
        res["synthesis"] = {"impressions": 400, "cost": 400.0 * it, "seconds": it / 10}
        (run / "results.json").write_text(json.dumps(res))
    runs = report_html.load_sweep(tmp_path)
    points, header, rows = report_html.cost_points(runs, ["synth.iterations"])
    assert sorted(p["cost"] for p in points["c2ir"]) == [8000.0, 120000.0]
    assert [r[0] for r in rows] == ["synth.iterations=20", "synth.iterations=300"] and header[1] == "cost (fwd+bwd)"
    page = write_sweep_report(tmp_path).read_text()
    assert "Quality against synthesis cost" in page and "120,000" in page
    assert page.count("data:image/png;base64,") == 2  # metrics vs synth.iterations + quality vs cost


def test_sweep_page_without_cost_records_has_no_cost_section(tmp_path):
    _fake_sweep(tmp_path, [[f"synth.iterations={it}"] for it in (20, 300)])
    assert "Quality against synthesis cost" not in write_sweep_report(tmp_path).read_text()


def test_per_detector_histograms_are_cut_from_one_rendering(tmp_path, monkeypatch):
    """hist_<det>.png: each panel of the page's histogram figure (with the legend), not a figure of its own."""
    from PIL import Image

    inp = fake_inputs(n_dets=5)
    renders = []
    real = plots.panel_pngs
    monkeypatch.setattr(plots, "panel_pngs", lambda *a, **k: renders.append(1) or real(*a, **k))
    write_run_report(tmp_path, inp)
    assert len(renders) == 1
    panel = Image.open(tmp_path / "hist_c2ir.png")
    assert 150 < panel.width < 700 and 100 < panel.height < 400  # one panel and the legend, not the whole figure
    assert len({(tmp_path / f"hist_{d}.png").read_bytes() for d in inp.result["metrics"]}) == 5


def test_below_chance_aurocs_are_explained_on_the_page(tmp_path):
    inp = fake_inputs(n_dets=4)
    assert report_html.below_chance_note(inp.result) == ""   # fake scores sit at or above chance
    inp.result["metrics"]["det00"]["noise_a"]["auroc"] = 9.7
    inp.result["metrics"]["det01"]["shuffled_b"]["auroc"] = 39.9
    note = report_html.below_chance_note(inp.result)
    assert note.startswith("Below chance (AUROC < 40): det00 on noise_a (9.7), det01 on shuffled_b (39.9). ")
    assert "more confident on those inputs" in note
    assert "and 1 more" in report_html.below_chance_note(inp.result, limit=1)
    page = write_run_report(tmp_path, inp).read_text()
    assert "det00 on noise_a (9.7)" in page and 'class="explain"' in page and 'class="note"' not in page
