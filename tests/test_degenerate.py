"""Issue 24: non-finite scores are never a number, degenerate parameters and sizes that cannot fit are refused
before compute, and a bad value is reported under the key the user typed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from c2ir import cli
from c2ir.errors import C2IRError
from conftest import labelled_folder, make_cfg

# (stage, overrides, what the one line must contain): each fails before any training or synthesis
ONE_LINE = [
    ("evaluate", ["++detectors.c2ir.logit_weight=nan"], "logit_weight=nan"),   # was AUROC 0.0 / FPR95 100.0
    ("evaluate", ["++detectors.energy.temperature=0"], "temperature=0"),      # was NaN scores reported as AUROC 0
    ("evaluate", ["++detectors.knn_imp.k=0"], "k=0"),                         # was an IndexError traceback
    ("synthesize", ["synth.per_class=1000000000000"], "PB of memory"),        # was accepted (millennia of compute)
    ("evaluate", ["ood.gaussian_noise.max_samples=1000000000000"], "of memory"),
    ("train", ["model.width=0"], "model.width=0"),                            # was a traceback from torch
    ("train", ["data.mean=[0.3,0.3]"], "data.mean=[0.3, 0.3] has 2 value(s)"),
    ("train", ["data.std=[0]"], "data.std[0]=0"),                             # was "training diverged; lower train.lr"
    ("synthesize", ["data.flip_invariant=maybe"], "data.flip_invariant='maybe'"),  # was reported as synth.flip
    ("evaluate", ["features.spatial_grid=1000"], "features.spatial_grid=1000 is finer"),
    ("train", ["hydra.run.dir=/proc/c2ir-no-such/run"], "hydra.run.dir=/proc/c2ir-no-such/run cannot be created"),
    ("evaluate", ["device=meta"], "device='meta' is not supported"),          # was a traceback mid-compute
]


@pytest.mark.parametrize("stage,overrides,needle", ONE_LINE, ids=[" ".join(o) for _, o, _ in ONE_LINE])
def test_bad_values_fail_before_compute_in_one_line(stage, overrides, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        code = cli.main([stage, *overrides, f"cache_root={tmp_path / 'c'}", "train.epochs=1"])
    except SystemExit as exc:  # a stage's own check (the detectors are built before any stage runs)
        code = exc.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("c2ir: error:")
           or "Traceback" in line or "Error" in line]
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not list((tmp_path / "c").glob("train/*")) and not list((tmp_path / "c").glob("synthesize/*"))


def test_size_estimates_name_the_key_and_the_estimate(tmp_path):
    from c2ir.sizes import check_sizes

    cfg = make_cfg(tmp_path, ["ood=[gaussian_noise]", "ood.gaussian_noise.max_samples=50000000"])
    with pytest.raises(C2IRError, match=r"ood.gaussian_noise.max_samples=50000000 needs about 38.4 GB of memory"):
        check_sizes(cfg, memory=16 * 10**9, disk=10**12)
    check_sizes(cfg, memory=64 * 10**9, disk=10**12)  # fits a larger machine
    with pytest.raises(C2IRError, match="would write about .* to the cache"):
        check_sizes(make_cfg(tmp_path, ["synth.per_class=100000"]), memory=10**12, disk=10**8)


def test_metrics_refuse_non_finite_scores():
    from c2ir.metrics import ood_metrics

    with pytest.raises(ValueError, match="NaN or infinite"):
        ood_metrics(np.array([0.1, np.nan]), np.array([0.5, 0.7]))


def test_a_detector_with_nan_scores_is_not_computable_never_a_number(tmp_path, monkeypatch):
    """Any detector whose scores hold NaN/inf is reported as not computable, with the cause; the others are
    evaluated as usual."""
    from c2ir import report
    from c2ir.detectors.energy import Energy
    from c2ir.models import build_model
    from c2ir.graph import resolve
    from c2ir.stages.evaluate import EVALUATE, available
    from c2ir.stages.job import cli_job

    torch.manual_seed(0)
    torch.save(build_model(make_cfg(tmp_path).model).state_dict(), tmp_path / "ck.pt")
    job = cli_job(make_cfg(tmp_path, ["ood=[gaussian_noise]", f"model.checkpoint={tmp_path / 'ck.pt'}",
                                      "detectors=[msp,energy]", "synth.per_class=1", "synth.iterations=2"]))
    monkeypatch.setattr(Energy, "_score", lambda self, feats: torch.full((len(feats["logits"]),), float("nan")))
    result = resolve(EVALUATE, job, available(job)).value
    assert set(result["metrics"]) == {"msp"} and "NaN" in result["not_computable"]["energy"]
    text = report.terminal_table(result) + report.markdown(result)
    assert "Not computable" in text and "| energy |" not in text


def test_a_not_computable_detector_gets_no_near_far_row_and_no_openood_csv(tmp_path, monkeypatch):
    """Issue 23b's near/far rows, FPR headers and OpenOOD export pass through issue 24's non-finite handling: a
    NaN-scoring detector gets no number in any table (near/far means included) and no OpenOOD CSV, and every
    table names it as not computable; the other detectors get their near/far rows under the chosen convention."""
    import csv

    from c2ir import report
    from c2ir.detectors.energy import Energy
    from c2ir.groups import groups_of
    from c2ir.models import build_model
    from c2ir.openood_export import write_openood_csvs
    from c2ir.report_html import RunInputs, run_page, split_scores
    from c2ir.graph import resolve
    from c2ir.stages.evaluate import EVALUATE, available
    from c2ir.stages.job import cli_job

    torch.manual_seed(0)
    torch.save(build_model(make_cfg(tmp_path).model).state_dict(), tmp_path / "ck.pt")
    cfg = make_cfg(tmp_path, ["ood=[gaussian_noise,uniform_noise]", f"model.checkpoint={tmp_path / 'ck.pt'}",
                              "detectors=[msp,energy]", "synth.per_class=1", "synth.iterations=2",
                              "ood.gaussian_noise.max_samples=50", "ood.uniform_noise.max_samples=50",
                              "++ood.gaussian_noise.group=near", "++ood.uniform_noise.group=far",
                              "metrics.fpr_positive=ood"])
    monkeypatch.setattr(Energy, "_score", lambda self, feats: torch.full((len(feats["logits"]),), float("inf")))
    job = cli_job(cfg)
    art = resolve(EVALUATE, job, available(job)).artifact
    result = {**art.json("results.json"), "groups": groups_of(cfg)}
    assert set(result["metrics"]) == {"msp"} and "infinite" in result["not_computable"]["energy"]
    report.write_reports(tmp_path / "run", result)
    with open(tmp_path / "run" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["detector"], r["ood"]) for r in rows if r["ood"].endswith("mean")} == {
        ("msp", "mean"), ("msp", "near mean"), ("msp", "far mean")}
    assert "fpr95_ood_positive" in rows[0]
    for text in (report.markdown(result), report.terminal_table(result)):
        assert "near mean AUROC / FPR95 (OOD+)" in text and "Not computable" in text and "| energy |" not in text
    written = write_openood_csvs(tmp_path / "run" / "openood", result, split_scores(art.tensors("scores.safetensors")))
    assert [p.name for p in written] == ["msp.csv"]
    assert "energy" in (tmp_path / "run" / "openood" / "README.txt").read_text()
    page = run_page(RunInputs(result=result, published="openood_cifar10")).render()
    assert "Not computable (no metric reported): energy" in page and "near mean" in page


def test_imagefolder_train_split_with_an_empty_class_is_an_error(tmp_path):
    """Issue: a train split with an empty class trained with no warning (ID accuracy 43.9%, a class never seen)."""
    from c2ir.data import load_id

    root = labelled_folder(tmp_path / "ds", classes=3, per_class=2)
    for f in (root / "train" / "c1").iterdir():
        f.unlink()
    cfg = make_cfg(tmp_path, ["data=imagefolder", f"data.root={root}", "data.num_classes=3", "data.image_size=8"])
    with pytest.raises(C2IRError, match=r"class folder\(s\) \['c1'\] .* hold no images"):
        load_id(cfg.data, "train")
    assert len(load_id(cfg.data, "test")) == 6


def test_a_training_subset_without_a_class_is_an_error():
    from c2ir.inputs import check_every_class

    with pytest.raises(C2IRError, match=r"class\(es\) \[2\] have no training images"):
        check_every_class(torch.tensor([0, 1, 1, 3]), 4, "x-train")


def test_unavailable_devices_are_refused_by_name(monkeypatch):
    """mps where it is absent, a CUDA index beyond the machine's: one clear error (was a crash mid-compute, or exit 0
    when every stage was cached)."""
    from c2ir.device import resolve_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(C2IRError, match="MPS .* is not available here"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(C2IRError, match="has 1 CUDA device"):
        resolve_device("cuda:3")
    assert resolve_device("cpu") == torch.device("cpu")


def test_full_access_fit_data_missing_classes_is_a_warning(caplog):
    """`evaluate.max_train_samples=1`: the full-access rows are numbers from one image; the log says so."""
    import logging

    from c2ir.stages.fit import warn_thin_fit_data

    with caplog.at_level(logging.WARNING):
        warn_thin_fit_data({"labels": torch.tensor([3])}, 10, setting=1)
    assert "fitted on 1 ID training image(s), 10 of 10 classes with fewer than 2" in caplog.text
    assert "raise evaluate.max_train_samples (now 1)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):   # not cut by the setting: the split itself is thin
        warn_thin_fit_data({"labels": torch.tensor([0, 0, 1])}, None)
    assert "1 of 2 classes" in caplog.text and "give the ID training split more images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_thin_fit_data({"labels": torch.arange(10).repeat(2)}, 10)
    assert caplog.text == ""


def test_mahalanobis_on_one_fit_sample_warns_only_in_words(recwarn):
    """One fit sample: no spread to z-score by; no torch UserWarning leaks (the log says what is wrong)."""
    from c2ir.detectors import FitData, build_detector

    det = build_detector("mahalanobis_multi_imp", {"type": "mahalanobis", "multi_layer": True, "fit_on": "impressions"})
    feats = {"layer/a": torch.randn(1, 4), "penultimate": torch.randn(1, 3), "logits": torch.randn(1, 2),
             "labels": torch.tensor([0])}
    det.fit(FitData(impressions=feats))
    assert not [w for w in recwarn if "degrees of freedom" in str(w.message)]


@pytest.mark.parametrize("device", ["cuda:99", "mps"])
def test_an_unavailable_device_leaves_no_run_folder(device, capsys, tmp_path, monkeypatch):
    """`device=` is checked with the config, before Hydra makes the run folder (was: a folder holding only run.log)."""
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = cli.main(["run", f"device={device}", f"cache_root={tmp_path / 'c'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("c2ir: error:")]
    assert code == 2 and len(err) == 1 and f"device={device!r}" in err[0], err
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "c").exists()


def test_a_mistyped_key_gets_the_closest_name():
    from c2ir.validation import did_you_mean

    assert did_you_mean("iteratons", ["per_class", "iterations", "lr"]) == " (did you mean iterations?)"
    assert did_you_mean("zzz", ["per_class", "iterations", "lr"]) == ""


def test_a_checkpoint_without_a_state_dict_names_the_fix(tmp_path):
    import torch

    from c2ir.models.checkpoints import read_checkpoint

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(C2IRError, match=r"holds no state dict .*point model.checkpoint at a file saved with "
                                        r"torch.save\(model.state_dict\(\), path\)"):
        read_checkpoint(tmp_path / "list.pt")


def test_busy_machine_hint_only_when_threads_outnumber_free_cores():
    from c2ir.cli import busy_machine_hint, other_running_tasks

    assert busy_machine_hint(0, 2, 2) is None            # idle
    hint = busy_machine_hint(1, 2, 2)                    # one other job: 1 free core, 2 threads
    assert hint and "1 other running task(s) on 2 cores" in hint and "threads=1" in hint
    assert busy_machine_hint(5, 2, 1) is None            # one thread cannot thrash with itself
    assert busy_machine_hint(3, 16, 8) is None           # 13 free cores
    assert busy_machine_hint(9, 16, 8) is not None       # 7 free cores for 8 threads
    n = other_running_tasks()
    assert n is None or n >= 0


def test_the_device_is_checked_only_for_jobs_that_run_here():
    from c2ir.cli import jobs_run_here

    assert jobs_run_here(None, multirun=False)
    assert jobs_run_here(None, multirun=True)     # Hydra's basic launcher (no plugin configured)
    assert jobs_run_here("hydra._internal.core_plugins.basic_launcher.BasicLauncher", multirun=True)
    assert jobs_run_here("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", multirun=True)
    assert jobs_run_here("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", multirun=True)
    assert not jobs_run_here("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", multirun=True)


def test_a_slurm_sweep_may_name_a_device_this_machine_lacks():
    """The jobs run on the cluster's nodes: `-m launcher=slurm device=cuda` is not refused on a CPU-only login node,
    while the same sweep on the local launcher is."""
    import torch

    from c2ir.cli import validate_overrides

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the cluster extra")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    validate_overrides(["launcher=slurm", "device=cuda", "seed=0,1", "stage=run"], multirun=True)
    validate_overrides(["launcher=slurm", "device=cuda", "stage=run"], multirun=True)
    with pytest.raises(C2IRError, match="CUDA is not available"):
        validate_overrides(["device=cuda", "seed=0,1", "stage=run"], multirun=True)


def test_no_busy_hint_where_it_cannot_tell(monkeypatch):
    import c2ir.cli as c

    monkeypatch.setattr(c, "other_running_tasks", lambda: 5)
    monkeypatch.setattr(c.os, "cpu_count", lambda: 2)
    if hasattr(c.os, "sched_getaffinity"):
        monkeypatch.setattr(c.os, "sched_getaffinity", lambda pid: {0, 1})
        assert c.busy_hint_now(2)                                  # all CPUs usable, 5 others: the hint
        monkeypatch.setattr(c.os, "sched_getaffinity", lambda pid: {0})
        assert c.busy_hint_now(2) is None                          # confined to one CPU: the host count says nothing
        monkeypatch.setattr(c.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(c, "other_running_tasks", lambda: None)    # no /proc
    assert c.busy_hint_now(2) is None


@pytest.mark.parametrize("override,needle", [("detectors.energi.temperature=2", "(did you mean energy?)"),
                                             ("ood.pixel_shuffle.max_samples=3", "(did you mean pixel_shuffled?)")])
def test_a_mistyped_detector_or_ood_set_gets_the_closest_name(override, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert cli.main(["evaluate", override, f"cache_root={tmp_path / 'c'}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("c2ir: error:")]
    assert len(err) == 1 and needle in err[0], err
