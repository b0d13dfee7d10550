"""docs/ARCHITECTURE.md's worked example: a detector added as one file plus one YAML, in a fresh copy of the
tree with no other edit, appears in detector_names(), c2ir.detector(), `c2ir evaluate` and its report."""

import json
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO

API_CHECK = """
import torch, c2ir
from c2ir.models.small_cnn import SmallCNN
assert "feature_norm_imp" in c2ir.detector_names(), c2ir.detector_names()
torch.manual_seed(0)
model = SmallCNN(1, 10, 4).eval()
det = c2ir.detector("feature_norm_imp", model, num_classes=10, input_shape=(1, 8, 8), mean=[0.3], std=[0.4],
                    synth={"per_class": 2, "batch_size": 20, "iterations": 3, "flip": False, "jitter": 1}).fit()
scores = det.score(torch.randn(5, 1, 8, 8))
assert scores.shape == (5,) and bool(torch.isfinite(scores).all()) and det.threshold is not None
det.save("saved")
assert torch.equal(c2ir.load_detector("saved", model).score(torch.ones(2, 1, 8, 8)), det.score(torch.ones(2, 1, 8, 8)))
print("api ok")
"""


def _doc_files() -> dict[str, str]:
    """{path: text} of the fenced blocks of docs/ARCHITECTURE.md whose first line names a file."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    blocks = re.findall(r"```(?:python|yaml)\n# ((?:c2ir|configs)/\S+)\n(.*?)```", text, flags=re.S)
    return {path: body for path, body in blocks}


def test_a_detector_in_one_file_and_one_yaml_appears_everywhere(tmp_path):
    files = _doc_files()
    assert set(files) == {"c2ir/detectors/feature_norm.py", "configs/detectors/feature_norm_imp.yaml"}
    tree = tmp_path / "tree"
    for folder in ("c2ir", "configs"):
        shutil.copytree(REPO / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for path, body in files.items():
        assert not (tree / path).exists()
        (tree / path).write_text(body)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    api = subprocess.run([sys.executable, "-c", API_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert api.returncode == 0 and "api ok" in api.stdout, api.stderr[-3000:]
    cli = subprocess.run([sys.executable, "-m", "c2ir", "evaluate", "detectors=[feature_norm_imp,energy]",
                          "ood=[gaussian_noise]", "train.epochs=1", "synth.per_class=2", "synth.batch_size=20",
                          "synth.iterations=3", f"cache_root={tmp_path / 'cache'}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "| feature_norm_imp | data-free |" in cli.stdout
    run = next((tmp_path / "outputs" / "runs").glob("*/*_evaluate*"))
    res = json.loads((run / "results.json").read_text())
    assert set(res["metrics"]) == {"feature_norm_imp", "energy"} and res["access"]["feature_norm_imp"] == "data-free"
    assert "feature_norm_imp" in (run / "report.html").read_text()
