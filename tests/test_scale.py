"""Scale-out paths on CPU: torchrun with gloo (2 processes) and a parallel joblib multirun."""

import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import HAS_JOBLIB_LAUNCHER, run_cli

# two synthesis batches (one per rank under torchrun); 4 impressions per class: C2IR's weight selection needs them
ARGS = ["synth.per_class=4", "synth.batch_size=20", "synth.iterations=20", "train.epochs=3",
        "detectors=[msp,energy,c2ir,knn_imp]", "ood=[gaussian_noise,pixel_shuffled]", "batch_size=100"]


def _only(cache, stage, filename):
    (d,) = [p for p in (cache / stage).iterdir() if not p.name.startswith(".") and not p.name.endswith(".partial")]
    return load_file(str(d / filename))


def test_torchrun_gloo_two_processes_matches_single_process(tmp_path):
    dist_cache, single_cache = tmp_path / "dist", tmp_path / "single"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "c2ir", "run", *ARGS, f"cache_root={dist_cache}", "threads=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "distributed: rank 1 of 2 (gloo)" in proc.stdout + proc.stderr
    single = run_cli(["run", *ARGS, f"cache_root={single_cache}", "threads=1"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    a = _only(dist_cache, "synthesize", "impressions.safetensors")
    b = _only(single_cache, "synthesize", "impressions.safetensors")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
    sa, sb = _only(dist_cache, "evaluate", "scores.safetensors"), _only(single_cache, "evaluate", "scores.safetensors")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-6), k


@pytest.mark.skipif(not HAS_JOBLIB_LAUNCHER, reason="needs the cluster extra: pip install 'c2ir[cluster]'")
def test_joblib_multirun_shares_upstream_artifacts(tmp_path):
    proc = run_cli(["run", "-m", "launcher=local", *ARGS, "ipm=mean_l2,mean_l1", f"cache_root={tmp_path / 'cache'}"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "outputs" / "multirun").rglob("run.log"))
    for stage in ("train", "synthesize", "collect_stats", "weight_layers"):
        assert len(re.findall(rf"cache miss: computing {stage}/", logs)) == 1, stage
    assert len(re.findall(r"cache miss: computing evaluate/", logs)) == 2
    assert len(list((tmp_path / "outputs" / "multirun").rglob("results.json"))) == 2
