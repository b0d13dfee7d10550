"""Architectures, checkpoint formats, safe loading, and clear mismatch errors."""

import pickle

import pytest
import torch
from omegaconf import OmegaConf

from c2ir.errors import C2IRError
from c2ir.models import build_model, load_checkpoint
from c2ir.models.checkpoints import read_checkpoint


def _cfg(**kw):
    base = {"num_classes": 10, "in_channels": 3, "trust_checkpoint": False, "name": kw.get("arch")}
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("cfg,head", [
    (dict(arch="small_cnn", width=8), "fc"),
    (dict(arch="cifar_resnet", depth=20), "linear"),
    (dict(arch="cifar_resnet", depth=110), "linear"),
    (dict(arch="resnet18"), "linear"),
    (dict(arch="wide_resnet", depth=16, widen_factor=2), "fc"),
    (dict(arch="densenet", depth=40), "fc"),
])
def test_architectures_forward(cfg, head):
    model = build_model(_cfg(**cfg)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(dict(model.named_modules())[head], torch.nn.Linear)


def test_cifar_resnet20_parameter_count_and_keys():
    model = build_model(_cfg(arch="cifar_resnet", depth=20))
    n = sum(p.numel() for p in model.parameters())
    assert n == 269_722  # the published ResNet-20 (0.27M) count
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer3.2.bn2.weight", "linear.weight"} <= keys


def test_resnet34_keys_match_the_mahalanobis_release_layout():
    keys = set(build_model(_cfg(arch="resnet34")).state_dict())
    assert {"conv1.weight", "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
            "layer4.2.bn2.weight", "linear.weight"} <= keys
    assert not any(k.startswith("fc.") for k in keys)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "net", "module_prefix", "zip_model_object"])
def test_checkpoint_wrappers(tmp_path, wrap):
    cfg = _cfg(arch="cifar_resnet", depth=20)
    src = build_model(cfg)
    sd = src.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "net": {"net": sd, "acc": 0.9}, "module_prefix": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
           "zip_model_object": {"model_state_dict": sd}}[wrap]
    path = tmp_path / "ck.pt"
    torch.save(obj, path)
    dst = build_model(cfg)
    load_checkpoint(dst, cfg, str(path))
    for k, v in sd.items():
        assert torch.equal(dst.state_dict()[k], v)


def test_legacy_non_zip_format_loads(tmp_path):
    cfg = _cfg(arch="small_cnn", width=4, in_channels=1)
    sd = build_model(cfg).state_dict()
    path = tmp_path / "old.th"
    torch.save({"state_dict": sd, "best_prec1": 91.7}, path, _use_new_zipfile_serialization=False)
    load_checkpoint(build_model(cfg), cfg, str(path))


class Payload:
    """Unpickling this object would run code: it must never happen without the user's consent."""

    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, fh)
    with pytest.raises(C2IRError, match="model.trust_checkpoint=true"):
        read_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    with pytest.raises(C2IRError, match="not a PyTorch checkpoint: .*notes.pth"):
        read_checkpoint(tmp_path / "notes.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, tmp_path / "evil_zip.pt")
    with pytest.raises(C2IRError, match="model.trust_checkpoint=true"):
        read_checkpoint(tmp_path / "evil_zip.pt")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_wrong_architecture_lists_keys(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(build_model(_cfg(arch="cifar_resnet", depth=20)).state_dict(), path)
    cfg = _cfg(arch="cifar_resnet", depth=32)
    with pytest.raises(C2IRError, match=r"model=cifar_resnet: missing keys \[layer1\.3"):
        load_checkpoint(build_model(cfg), cfg, str(path))
    cfg100 = _cfg(arch="cifar_resnet", depth=20, num_classes=100)
    with pytest.raises(C2IRError, match="shape mismatches"):
        load_checkpoint(build_model(cfg100), cfg100, str(path))


def test_missing_checkpoint_path():
    cfg = _cfg(arch="small_cnn", width=4)
    with pytest.raises(C2IRError, match="checkpoint not found"):
        load_checkpoint(build_model(cfg), cfg, "/nonexistent/model.pt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(C2IRError):
        read_checkpoint(path)


def test_a_file_that_is_no_checkpoint_is_refused_from_its_first_bytes(tmp_path):
    """check_inputs reads a checkpoint's first bytes before any stage: torch.save (zip or legacy pickle) and
    safetensors files pass, a text file is one line."""
    from safetensors.torch import save_file

    from c2ir.validation import checkpoint_format_problem

    torch.save({"w": torch.zeros(1)}, tmp_path / "zip.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    for name in ("zip.pt", "legacy.pt", "w.safetensors"):
        checkpoint_format_problem(tmp_path / name)
    (tmp_path / "hostname").write_text("myhost\n")
    with pytest.raises(C2IRError, match=r"hostname is not a PyTorch checkpoint .* set model.checkpoint"):
        checkpoint_format_problem(tmp_path / "hostname")


def test_torchvision_classifier_by_name_offline():
    cfg = _cfg(arch="torchvision", name="resnet18", weights=None, in_channels=3)
    model = build_model(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(C2IRError, match="unknown torchvision classifier"):
        build_model(_cfg(arch="torchvision", name="not_a_net", weights=None))
