"""Crash safety (kill -9 and resume), determinism, and failure modes, through the CLI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import run_cli

SYNTH = ["synth.per_class=6", "synth.batch_size=20", "synth.iterations=60", "train.epochs=3",
         "detectors=[msp,c2ir]", "ood=[gaussian_noise]"]


def _start(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # as run_cli: same threads, same floats
    return subprocess.Popen([sys.executable, "-m", "c2ir", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc, predicate, timeout=240):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, "process finished before it could be killed: " + proc.stdout.read()[-2000:]
        assert time.time() - t0 < timeout, "timed out waiting to kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _artifact(cache: Path, stage: str, filename: str) -> dict:
    (d,) = [p for p in (cache / stage).iterdir() if not p.name.startswith(".") and not p.name.endswith(".partial")]
    return load_file(str(d / filename))


def test_kill_during_synthesize_resumes_to_identical_result(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = ["synthesize", *SYNTH]
    proc = _start([*args, f"cache_root={killed}"], tmp_path)
    batches = lambda: list((killed / "synthesize").glob("*.partial/batch_*.safetensors")) if (killed / "synthesize").exists() else []
    _kill_when(proc, lambda: len(batches()) >= 2)
    assert not [p for p in (killed / "synthesize").iterdir() if not p.name.startswith(".") and not p.name.endswith(".partial")], \
        "no complete-looking artifact may exist after the kill"
    # resumed and fresh through `run` (synthesis, then the scores): one process each instead of two
    run = ["run", *SYNTH, "report.figures=false"]   # scores compared, not pages
    resumed = run_cli([*run, f"cache_root={killed}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already done (resuming)" in resumed.stdout + resumed.stderr
    fresh = run_cli([*run, f"cache_root={clean}"], tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    a = _artifact(killed, "synthesize", "impressions.safetensors")
    b = _artifact(clean, "synthesize", "impressions.safetensors")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
    # same config and seed -> identical scores, too
    sa = _artifact(killed, "evaluate", "scores.safetensors")
    sb = _artifact(clean, "evaluate", "scores.safetensors")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_kill_during_train_resumes_to_identical_model(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = ["train", "train.epochs=6", "train.batch_size=16"]
    proc = _start([*args, f"cache_root={killed}"], tmp_path)
    epochs = lambda: list((killed / "train").glob("*.partial/epoch_*.safetensors")) if (killed / "train").exists() else []
    _kill_when(proc, lambda: any(int(p.stem.split("_")[1]) >= 2 for p in epochs()))
    resumed = run_cli([*args, f"cache_root={killed}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epochs done; resuming from epoch_" in resumed.stdout + resumed.stderr
    fresh = run_cli([*args, f"cache_root={clean}"], tmp_path)
    assert fresh.returncode == 0
    a = _artifact(killed, "train", "model.safetensors")
    b = _artifact(clean, "train", "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_during_synthesis_stops_with_a_hint(tmp_path):
    # a finite weight (the schema refuses nan) whose product with the float32 BN loss overflows to inf
    proc = run_cli(["synthesize", "train.epochs=2", "synth=fast", "synth.bn_weight=1e39", f"cache_root={tmp_path / 'c'}"],
                   tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "c2ir: error: synthesis diverged" in proc.stderr and "iteration 0" in proc.stderr and "synth.lr" in proc.stderr


def test_refuses_unsafe_checkpoint_via_cli(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/PWNED",))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    proc = run_cli(["evaluate", f"model.checkpoint={tmp_path / 'evil.pt'}", f"cache_root={tmp_path / 'c'}"], tmp_path)
    assert proc.returncode == 2 and "model.trust_checkpoint=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "PWNED").exists()
