"""report.py: table rows and their order, the written files, and the sweep aggregation over seeds."""

import csv
import json

import pytest

from c2ir import report


def _metrics(auroc, fpr):
    return {"fpr95": fpr, "auroc": auroc, "aupr_in": auroc - 1, "aupr_out": auroc - 2, "detection_acc": auroc - 3}


def _result(c2ir_auroc=90.0):
    return {"id_set": "digits-test", "id_accuracy": 0.975, "ood_sets": ["noise", "shuffled"],
            "counts": {"digits-test": 540, "noise": 100, "shuffled": 50},
            "access": {"c2ir": "data-free", "msp": "data-free", "knn": "full access", "energy": "data-free",
                       "c2ir_paper": "data-free"},
            "metrics": {"knn": {"noise": _metrics(99.0, 1.0), "shuffled": _metrics(97.0, 5.0)},
                        "msp": {"noise": _metrics(60.0, 80.0), "shuffled": _metrics(70.0, 60.0)},
                        "c2ir": {"noise": _metrics(c2ir_auroc, 20.0), "shuffled": _metrics(80.0, 40.0)},
                        "energy": {"noise": _metrics(65.0, 70.0), "shuffled": _metrics(75.0, 50.0)},
                        "c2ir_paper": {"noise": _metrics(70.0, 30.0), "shuffled": _metrics(60.0, 50.0)}},
            "ipm": {"name": "mean_standardized"},
            "layer_weights": {"method": "grad_abs", "layers": ["a", "b"], "weights": [0.25, 0.75]}}


def test_detector_order_is_c2ir_then_data_free_then_full_access():
    assert report.ordered_detectors(_result()) == ["c2ir", "c2ir_paper", "energy", "msp", "knn"]


def test_the_two_c2ir_rows_say_what_they_are():
    assert report.label("c2ir") == "c2ir: C2IR + Energy (this project's default)"
    assert report.label("c2ir_paper") == "c2ir_paper: C2IR (paper: feature deviations)"
    assert report.label("energy") == "energy"


def test_rows_have_one_row_per_set_and_the_mean_over_sets():
    rows = report.rows(_result())
    assert len(rows) == 5 * 3
    c2ir = [r for r in rows if r["detector"] == "c2ir"]
    assert [r["ood"] for r in c2ir] == ["noise", "shuffled", "mean"]
    assert c2ir[-1]["auroc"] == pytest.approx(85.0) and c2ir[-1]["fpr95"] == pytest.approx(30.0)
    assert c2ir[-1]["detection_acc"] == pytest.approx(82.0)
    assert {r["access"] for r in rows if r["detector"] == "knn"} == {"full access"}


def test_summary_table_cells_and_header_line():
    table = report.summary_table(_result()).splitlines()
    assert table[0] == ("| detector | access | noise AUROC / FPR95 (ID+) | shuffled AUROC / FPR95 (ID+) "
                        "| mean AUROC / FPR95 (ID+) |")
    assert table[2] == "| c2ir: C2IR + Energy (this project's default) | data-free | 90.0 / 20.0 | 80.0 / 40.0 | 85.0 / 30.0 |"
    assert table[3].startswith("| c2ir_paper: C2IR (paper: feature deviations) | data-free | 70.0 / 30.0 |")
    assert table[-1].startswith("| knn | full access |")
    assert report.header(_result()) == ("ID set: digits-test (540 images), ID accuracy: 97.50%; "
                                        "OOD sets: noise (100), shuffled (50)")
    assert report.weights_line(_result()) == "C2IR layer weights (MGI, grad_abs), ipm=mean_standardized: a=0.250, b=0.750"
    assert report.weights_line({**_result(), "layer_weights": {}}) == ""
    fit = {"c2ir": {"ipm": "mahalanobis", "logit_score": "energy", "logit_weight": 8.0, "selected": True},
           "c2ir_paper": {"ipm": "mean_standardized", "logit_score": "none", "logit_weight": 0.0, "selected": False}}
    assert report.weights_line({**_result(), "c2ir_fit": fit}) == (
        "C2IR layer weights (MGI, grad_abs): a=0.250, b=0.750; c2ir: ipm=mahalanobis, energy x8 (chosen on proxy "
        "outliers); c2ir_paper: ipm=mean_standardized (configured)")


def test_write_reports_writes_md_csv_and_json(tmp_path):
    report.write_reports(tmp_path / "run", _result())
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| c2ir: C2IR + Energy (this project's default) | data-free | mean | 30.00 | 85.00 | 84.00 | 83.00 | 82.00 |" in md
    assert report.CONVENTION in md
    with (tmp_path / "run" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and rows[0]["detector"] == "c2ir" and float(rows[0]["auroc"]) == 90.0
    assert rows[0]["label"] == "C2IR + Energy (this project's default)" and rows[3]["detector"] == "c2ir_paper"
    assert rows[-1]["label"] == ""
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["rows"] == report.rows(_result()) and data["convention"] == report.CONVENTION
    assert data["labels"] == {d: report.DETECTOR_LABELS[d] for d in ("c2ir", "c2ir_paper")}


def _write_run(directory, result, overrides):
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(result))
    (directory / ".hydra").mkdir()
    (directory / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_aggregate_groups_by_setting_without_seed_and_averages_seeds(tmp_path, caplog):
    for i, (seed, auroc) in enumerate([(0, 90.0), (1, 70.0)]):
        _write_run(tmp_path / str(i), _result(auroc), [f"seed={seed}", "ipm=mean_l2"])
    _write_run(tmp_path / "2", _result(50.0), ["seed=0", "ipm=mean_l1"])
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "results.json").write_text("{not json")
    text, table = report.aggregate(tmp_path)
    c2ir = {r["setting"]: r for r in table if r["detector"] == "c2ir"}
    assert set(c2ir) == {"ipm=mean_l2", "ipm=mean_l1"}
    # per run the mean over sets is (auroc + 80) / 2: 85 and 75 -> mean 80, std 5
    assert c2ir["ipm=mean_l2"]["runs"] == 2
    assert c2ir["ipm=mean_l2"]["auroc_mean"] == pytest.approx(80.0)
    assert c2ir["ipm=mean_l2"]["auroc_std"] == pytest.approx(5.0)
    assert c2ir["ipm=mean_l1"]["runs"] == 1 and c2ir["ipm=mean_l1"]["auroc_mean"] == pytest.approx(65.0)
    assert "3 runs (1 unreadable results.json skipped)" in text
    assert "| ipm=mean_l2 | c2ir | 2 | 2 | 80.00 +- 5.00 | 30.00 +- 0.00 |" in text
    assert "| ipm=mean_l1 | c2ir | 1 | 1 | 65.00 (one run) | 30.00 (one run) |" in text   # no "+- 0.00" for one run
    assert "skipping" in caplog.text and "repeat a seed" not in text and "left no results.json" not in text


def test_aggregate_says_when_runs_repeat_a_seed_and_names_jobs_without_results(tmp_path, caplog):
    for i in range(2):   # `-m seed=0,0`: two runs, one seed
        _write_run(tmp_path / str(i), _result(80.0 + i), ["seed=0"])
    (tmp_path / "2" / ".hydra").mkdir(parents=True)   # a job that failed or was killed before its results
    (tmp_path / "2" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    text, table = report.aggregate(tmp_path)
    c2ir = next(r for r in table if r["detector"] == "c2ir")
    assert c2ir["runs"] == 2 and c2ir["seeds"] == 1
    assert "some settings repeat a seed; their spread is run-to-run noise, not a spread over seeds" in text
    assert "1 of 3 jobs left no results.json (failed or killed): 2" in text
    assert "has no results.json" in caplog.text


def test_reports_in_progress_marks_a_folder_until_its_reports_are_written(tmp_path):
    from c2ir.report import INCOMPLETE, reports_in_progress

    with reports_in_progress(tmp_path / "run"):
        assert (tmp_path / "run" / INCOMPLETE).is_file()
    assert not (tmp_path / "run" / INCOMPLETE).exists()
    with pytest.raises(RuntimeError), reports_in_progress(tmp_path / "killed"):
        raise RuntimeError("a plot crashed")   # as a kill -9 would: the marker stays
    assert "Rerun the same command" in (tmp_path / "killed" / INCOMPLETE).read_text()


def test_sets_too_small_for_their_metrics_are_named():
    res = {"id_set": "digits-test", "ood_sets": ["noise", "folder"], "counts": {"digits-test": 1, "noise": 500, "folder": 3}}
    line = report.few_samples_line(res)
    assert line.startswith("Warning: too few images for meaningful metrics: digits-test (1), folder (3); ")
    assert "at least 20 images" in line and "data.max_test_samples" in line
    assert report.few_samples_line({**res, "counts": {"digits-test": 540, "noise": 500, "folder": 20}}) == ""


def test_report_of_a_sweep_whose_jobs_all_failed_says_so(tmp_path, capsys):
    from c2ir import cli

    for i in range(2):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n")
    assert cli.report_main([str(tmp_path)]) == 2
    assert "none of the 2 jobs under" in capsys.readouterr().err
