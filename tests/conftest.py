"""Shared fixtures: composed configs with tiny overrides, a private cache per test, shared-data skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from c2ir.config import config_dir, register_resolvers
from c2ir.data.shared import shared_dir

REPO = Path(__file__).resolve().parents[1]
# The embedded default shrunk for tests: fewer epochs, impressions (8 per class: C2IR's Energy-weight selection
# needs >= 4), detectors and OOD sets; the synthesis iterations are the shipped default's (synth=default).
TINY = ["detectors=[msp,energy,c2ir,c2ir_paper,mahalanobis_imp,nmd]", "ood=[pixel_shuffled,gaussian_noise]",
        "train.epochs=8", "synth.per_class=8", "synth.batch_size=80"]

def has_module(name: str) -> bool:
    """True if `name` is importable (find_spec raises when a parent package is missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


HAS_JOBLIB_LAUNCHER = has_module("hydra_plugins.hydra_joblib_launcher")
needs_shared = pytest.mark.skipif(shared_dir() is None, reason="shared/ data folder not found (set C2IR_SHARED_DIR)")


def make_cfg(tmp_path: Path, overrides: list[str] | None = None):
    """Compose the real config tree with overrides, caching under tmp_path."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"cache_root={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}",
                                            "device=cpu", *(overrides or [])])


def labelled_folder(root: Path, classes: int = 3, per_class: int = 5, shape: tuple[int, ...] = (32, 32, 3),
                    prefix: str = "c") -> Path:
    """`<root>/{train,test}/<prefix><k>/<i>.png` of random pixels (fixed seed; shape (H, W) is greyscale):
    a tiny ImageFolder ID set."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"{prefix}{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda overrides=None: make_cfg(tmp_path, overrides)


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`c2ir <args>` in a subprocess (python -m c2ir), output captured."""
    # one torch thread: the test models are tiny, and two threads per process thrash a busy 2-core machine
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "c2ir", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and does not thrash a busy machine
    yield


def assert_self_contained(page: str) -> None:
    """An HTML page opens from disk with no network: images are data: URIs, links are in-page anchors."""
    import re

    assert page.lstrip().startswith("<!DOCTYPE html>")
    srcs = re.findall(r"""\bsrc\s*=\s*["']?([^"' >]*)""", page, flags=re.I)
    hrefs = re.findall(r"""\bhref\s*=\s*["']?([^"' >]*)""", page, flags=re.I)
    assert srcs, "no embedded image"
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs if not s.startswith("data:")]
    assert all(h.startswith("#") for h in hrefs), [h for h in hrefs if not h.startswith("#")]
    for needle in ("<script", "<link", "@import", "url(", "<iframe", "<object", "<embed"):
        assert needle not in page.lower(), needle
