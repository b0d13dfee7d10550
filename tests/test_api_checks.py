"""Issue 24: the Python API at the CLI's standard. Every bad argument is one C2IRError line naming it and the
fix; non-finite inputs are never called in-distribution; a saved detector is loaded only when intact and
only onto the model it was fitted on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import c2ir
from c2ir.errors import C2IRError
from c2ir.models.small_cnn import SmallCNN

TINY_SYNTH = {"per_class": 3, "batch_size": 30, "iterations": 4, "jitter": 1, "flip": False}
DIGITS = {"num_classes": 10, "input_shape": (1, 8, 8), "mean": [0.3], "std": [0.4]}


def _model(channels: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = SmallCNN(channels, 10, 4)
    with torch.no_grad():
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.uniform_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A fitted C2IR and a fitted Mahalanobis detector saved once (fitting is the slow part)."""
    folder = tmp_path_factory.mktemp("saved")
    model = _model()
    det = c2ir.C2IR(model, **DIGITS, synth=TINY_SYNTH).fit()
    det.save(folder / "c2ir")
    loader = [(_x(20), torch.arange(20) % 10)]
    maha = c2ir.detector("mahalanobis", model).fit(loader)
    maha.save(folder / "maha")
    return model, det, folder


def _one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


# ----- constructor and fit arguments ---------------------------------------------------------------
CONSTRUCTOR_CASES = {
    "input_shape=(8,8)": (dict(DIGITS, input_shape=(8, 8)), "input_shape=(8, 8)"),
    "3 channels on a 1-channel model": (dict(DIGITS, input_shape=(3, 8, 8), mean=[0.3] * 3, std=[0.4] * 3),
                                        "first convolution takes 1"),
    "mean of wrong length": (dict(DIGITS, mean=[0.3, 0.3]), "mean has 2 value(s)"),
    "std of wrong length": (dict(DIGITS, std=[0.4, 0.4, 0.4]), "std has 3 value(s)"),
    "std=0": (dict(DIGITS, std=(0.0,)), "std=(0.0,)"),
    "synth per_class=0": (dict(DIGITS, synth={"per_class": 0}), "synth.per_class=0"),
    "bad layer regex": (dict(DIGITS, layers=["("]), "not a valid regular expression"),
    "batch_size=0": (dict(DIGITS, batch_size=0), "batch_size=0"),
    "num_classes='ten'": (dict(DIGITS, num_classes="ten"), "num_classes='ten'"),
    "unavailable device": (dict(DIGITS, device="cuda:7") if not torch.cuda.is_available() else
                           dict(DIGITS, device="nope"), "device="),
}


@pytest.mark.parametrize("case", list(CONSTRUCTOR_CASES))
def test_bad_constructor_arguments_are_one_line(case):
    kwargs, needle = CONSTRUCTOR_CASES[case]
    with pytest.raises(C2IRError) as err:
        c2ir.C2IR(_model(), **kwargs)
    _one_line(err, needle)


@pytest.mark.parametrize("name,params,needle", [
    ("knn_imp", {"k": 0}, "k=0"),
    ("energy", {"temperature": 0}, "temperature=0"),
    ("odin", {"temperature": -1.0}, "temperature=-1.0"),
    ("c2ir", {"logit_weight": float("nan")}, "logit_weight=nan"),
    # issue 23's detectors and parameters follow the same limits (finite floats, declared ranges)
    ("nac_imp", {"o_star": float("nan")}, "o_star=nan"),
    ("nac_imp", {"thresholds": 2}, "thresholds=2"),
    ("nac", {"fit_samples": 0}, "fit_samples=0"),
    ("nci_imp", {"alpha": -1.0}, "alpha=-1.0"),
    ("weiper_imp", {"eps": 0.0}, "eps=0.0"),
    ("weiper", {"bins": 1}, "bins=1"),
    ("weiper_imp", {"lambda1": float("inf")}, "lambda1=inf"),
    ("odin", {"epsilon": float("nan"), "clamp": True}, "epsilon=nan"),
])
def test_degenerate_detector_parameters_are_one_line(name, params, needle):
    """Issue: k=0 ended in an IndexError, temperature=0 gave NaN scores, logit_weight=nan AUROC 0 / FPR95 100."""
    with pytest.raises(C2IRError) as err:
        c2ir.detector(name, _model(), **DIGITS, **params)
    _one_line(err, needle)


def test_a_model_that_takes_vectors_takes_feature_batches():
    """A model starting with a Linear layer (what pytorch-ood / OpenOOD users wrap, issue 23) takes (N, F) batches;
    image models keep the (N, C, H, W) rule, and a batch or input_shape that does not fit is still one line."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x, y = torch.randn(30, 2), torch.arange(30) % 3
    det = c2ir.detector("knn", mlp, k=5).fit([(x, y)])
    assert det.score(torch.randn(7, 2)).shape == (7,) and det.input_shape == (2,)
    for bad, needle in ((torch.randn(2), "pass a batch (N, features)"), (torch.randn(4, 3), "input_shape=(2,)"),
                        (torch.zeros(4, 2, dtype=torch.long), "dtype int64")):
        with pytest.raises(C2IRError) as err:
            det.score(bad)
        _one_line(err, needle)
    with pytest.raises(C2IRError) as err:
        c2ir.detector("energy", mlp, input_shape=(3,))
    _one_line(err, "Linear layer of 2 input features")
    with pytest.raises(C2IRError) as err:  # an image model still wants 4-D batches
        c2ir.detector("energy", _model()).fit().score(torch.randn(4, 64))
    _one_line(err, "pass a batch (N, C, H, W)")


def test_k_larger_than_the_fit_set_is_an_error():
    """Issue: k above the fit set's size was capped silently (AUROC 91.6 -> 16.8)."""
    det = c2ir.detector("knn", _model(), k=50)
    with pytest.raises(C2IRError) as err:
        det.fit([(_x(20), torch.arange(20) % 10)])
    _one_line(err, "k=50", "20")


@pytest.mark.parametrize("loader,needle", [
    ([[_x(20)]], "(x, y)"),                                        # TensorDataset(x): batches are [x]
    ([(_x(20), torch.arange(20))], "0 to 19"),                    # labels out of range
    ([(_x(20), torch.rand(20))], "integer class indices"),         # float labels
    ([], "no batches"),
])
def test_full_access_fit_on_a_bad_loader_is_one_line(loader, needle):
    with pytest.raises(C2IRError) as err:
        c2ir.detector("mahalanobis", _model()).fit(loader)
    _one_line(err, needle)


# ----- score / predict inputs ----------------------------------------------------------------------
@pytest.mark.parametrize("x,needle", [
    (torch.zeros(0, 1, 8, 8), "empty batch"),
    (_x().double(), "dtype float64"),
    ((_x() * 50).to(torch.uint8), "uint8"),
    (_x()[0], "unsqueeze(0)"),
    (_x().tolist(), "not a torch.Tensor"),
    (torch.zeros(2, 1, 16, 16), "input_shape=(1, 8, 8)"),
])
def test_bad_batches_are_one_line(fitted, x, needle):
    model, det, _ = fitted
    with pytest.raises(C2IRError) as err:
        det.score(x)
    _one_line(err, needle)


def test_non_finite_inputs_are_never_in_distribution(fitted):
    """Issue: score() of NaN/inf inputs returned NaN and predict() called them ID."""
    _, det, _ = fitted
    x = _x(4)
    x[1, 0, 0, 0] = float("nan")
    x[2, 0, 3, 3] = float("inf")
    s = det.score(x)
    assert torch.isinf(s[1]) and torch.isinf(s[2]) and torch.isfinite(s[[0, 3]]).all()
    assert det.predict(x)[[1, 2]].all()


def test_nan_threshold_from_zero_std_is_refused(monkeypatch):
    """Issue: std=(0,) fitted with a NaN threshold and every input was then ID (now refused at construction;
    a detector that still scores its impressions NaN has no threshold)."""
    from c2ir.detectors.energy import Energy

    det = c2ir.detector("energy", _model(), **DIGITS, synth=TINY_SYNTH)
    # scores NaN, as a zero spread once did (fit() builds the detector from its config: patch the class)
    monkeypatch.setattr(Energy, "_score", lambda self, feats: torch.full((len(feats["logits"]),), float("nan")))
    with pytest.raises(C2IRError) as err:
        det.fit()
    _one_line(err, "not computable", "NaN")


# ----- save ------------------------------------------------------------------------------------------
def test_save_onto_a_file_or_into_a_read_only_folder_is_one_line(fitted, tmp_path):
    _, det, _ = fitted
    (tmp_path / "f").write_text("a file")
    with pytest.raises(C2IRError) as err:
        det.save(tmp_path / "f")
    _one_line(err, "is a file")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        target = Path("/proc/self/c2ir-saved") if os.access(ro, os.W_OK) else ro / "saved"  # root ignores chmod
        with pytest.raises(C2IRError) as err:
            det.save(target)
        _one_line(err, "is not a writable folder")
    finally:
        ro.chmod(0o700)


# ----- load: content hashes, field types, the model it was fitted on --------------------------------------
def _rehash(folder: Path) -> None:
    """Recompute the hashes in detector.json after an edit (as a careful forger would)."""
    try:
        from c2ir import saved
    except ImportError:  # a c2ir without saved-detector hashes (the code before issue 24): nothing to recompute
        return
    from c2ir.cache import file_sha256

    cfg = json.loads((folder / "detector.json").read_text())
    cfg["state_sha256"] = file_sha256(folder / "state.safetensors")
    cfg["config_sha256"] = saved._config_hash(cfg)
    (folder / "detector.json").write_text(json.dumps(cfg))


def _edit_json(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "detector.json").read_text())
    cfg.update(changes)
    (folder / "detector.json").write_text(json.dumps(cfg))


def _edit_state(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "state.safetensors"))
    change(t)
    save_file(t, str(folder / "state.safetensors"))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))


def _first_float(t: dict) -> str:
    return next(k for k, v in t.items() if v.is_floating_point() and v.numel() > 1)


LOAD_CASES = {
    "state bit flip (same size)": (lambda f: _flip(f / "state.safetensors"), "does not match the content hash"),
    "truncated state": (lambda f: (f / "state.safetensors").write_bytes((f / "state.safetensors").read_bytes()[:-40]),
                        "does not match the content hash"),
    "threshold 'abc'": (lambda f: _edit_json(f, threshold="abc"), "does not match its content hash"),
    "threshold 'abc', rehashed": (lambda f: (_edit_json(f, threshold="abc"), _rehash(f)), "threshold='abc'"),
    "threshold list, rehashed": (lambda f: (_edit_json(f, threshold=[1, 2]), _rehash(f)), "threshold=[1, 2]"),
    "threshold NaN, rehashed": (lambda f: (_edit_json(f, threshold=float("nan")), _rehash(f)), "threshold=nan"),
    "truncated json": (lambda f: (f / "detector.json").write_text((f / "detector.json").read_text()[:50]),
                       "not readable JSON"),
    "json is a list": (lambda f: (f / "detector.json").write_text("[1, 2]"), "not a saved detector"),
    "format 1 (no hashes)": (lambda f: (_edit_json(f, format=1)), "format 1"),
    "NaN in state, rehashed": (lambda f: (_edit_state(f, lambda t: t[_first_float(t)].view(-1).__setitem__(0, float("nan"))),
                                          _rehash(f)), "NaN or infinite"),
    "wrong-shape state, rehashed": (lambda f: (_edit_state(f, lambda t: t.update({k: torch.zeros(v.shape[0], v.shape[1] + 1)
                                                                                   for k, v in t.items() if v.dim() == 2})),
                                               _rehash(f)), "does not fit"),
    # issue: negative variances or zero spread in a saved state gave NaN scores silently
    "negative variance, rehashed": (lambda f: (_edit_state(f, lambda t: t.update({k: -v for k, v in t.items()
                                                                                   if "/var/" in k or "gvar" in k})),
                                               _rehash(f)), "non-finite scores"),
    "zero spread, rehashed": (lambda f: (_edit_state(f, lambda t: t.update(spread=torch.zeros_like(t["spread"]))),
                                         _rehash(f)), "non-finite scores"),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_damaged_saved_detector_is_refused_in_one_line(fitted, tmp_path, case):
    import shutil

    model, det, folder = fitted
    damage, needle = LOAD_CASES[case]
    copy = tmp_path / "copy"
    shutil.copytree(folder / "c2ir", copy)
    damage(copy)
    with pytest.raises(C2IRError) as err:
        c2ir.C2IR.load(copy, model)
    _one_line(err, needle)


def test_load_onto_another_model_is_refused(fitted):
    """Issue: load() onto other weights or other input channels was accepted."""
    model, det, folder = fitted
    for other in (_model(seed=1), _model(channels=3)):
        with pytest.raises(C2IRError) as err:
            c2ir.C2IR.load(folder / "c2ir", other)
        _one_line(err, "fitted on another model")
    # the model it was fitted on still loads, and scores as before
    x = _x()
    assert torch.equal(c2ir.C2IR.load(folder / "c2ir", model).score(x), det.score(x))
    c2ir.load_detector(folder / "maha", model).score(x)
