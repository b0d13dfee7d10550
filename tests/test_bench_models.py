"""scripts/bench_models.py: the summary of a multi-model sweep, on two fake seeds (no model is run)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_models", ROOT / "scripts" / "bench_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(sweep: Path, cache: Path, seed: int, c2ir_auc: float, share: float) -> None:
    run = sweep / str(seed)
    run.mkdir(parents=True)
    key = f"{seed:016x}"
    (run / "run.log").write_text(f"[..][c2ir.cache][INFO] - cache hit: synthesize/{key}\n")
    (cache / "synthesize" / key).mkdir(parents=True)
    (cache / "synthesize" / key / "summary.json").write_text(json.dumps({"target_share": share}))
    m = lambda auc, fpr: {"auroc": auc, "fpr95": fpr}  # noqa: E731
    result = {"ood_sets": ["a", "b"], "id_accuracy": 0.9,
              "access": {"c2ir": "data-free", "energy": "data-free", "gen": "data-free", "knn": "full access",
                         "c2ir_paper": "data-free"},
              "metrics": {"c2ir": {"a": m(c2ir_auc, 10), "b": m(100.0, 0)}, "energy": {"a": m(70, 50), "b": m(80, 40)},
                          "c2ir_paper": {"a": m(60, 50), "b": m(100.0, 0)},
                          "gen": {"a": m(75, 50), "b": m(85, 40)}, "knn": {"a": m(99, 1), "b": m(99, 1)}}}
    (run / "results.json").write_text(json.dumps(result))


def test_summary_mean_std_share_and_best_other(bench, tmp_path):
    cache, sweep = tmp_path / "cache", tmp_path / "out" / "digits"
    _fake_run(sweep, cache, 0, 80.0, 0.6)
    _fake_run(sweep, cache, 1, 90.0, 0.8)
    res = bench.collect(sweep, cache)
    assert res["acc"] == [90.0, 90.0] and res["share"] == pytest.approx([60.0, 80.0])
    assert res["detectors"]["c2ir"]["auroc"] == [90.0, 95.0]  # per-seed mean over the two OOD sets
    text = bench.summary({"digits": res}, "0,1")
    assert "| digits | 2 | 90.0 ± 0.0 | 70.0 ± 10.0 |" in text
    assert "| c2ir: C2IR + Energy (this project's default) | data-free | 92.5 ± 2.5 / 5.0 |" in text
    assert "| c2ir_paper: C2IR (paper: feature deviations) | data-free | 80.0 ± 0.0 / 25.0 |" in text
    assert "best other data-free detector (gen)" in text  # knn is full access, so not a candidate
    assert "| best other per set | 75.0 (gen) | 85.0 (gen) | |" in text
    assert "digits: c2ir minus the best other data-free detector: mean +12.5; per set a +10.0, b +15.0" in text
    assert "digits: c2ir minus c2ir_paper (what the logit term and the proxy choices add): mean +12.5; per set a +25.0, b +0.0" in text
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if x.startswith("| knn |"))) > lines.index(next(x for x in lines if x.startswith("| gen |")))


def test_unknown_model_is_a_clear_error(bench, capsys):
    assert bench.main(["--models", "resnet99"]) == 2
    assert "unknown model(s) ['resnet99']" in capsys.readouterr().err
