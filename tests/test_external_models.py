"""Models from other libraries' layouts: OpenOOD's ResNet18_32x32 checkpoints, and timm classifiers by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from c2ir.errors import C2IRError
from c2ir.extraction import require_batchnorm, resolve_layers
from c2ir.models.loading import load_classifier
from conftest import make_cfg
from test_openood import openood_layout_checkpoint


def _openood_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """OpenOOD's ResNet18_32x32.forward written with torch.nn.functional over its state dict (eval mode):
    relu(bn1(conv1(x))), four stages of two BasicBlocks (1x1-conv + BN shortcut where the shape changes),
    global average pooling, fc."""
    def bn(h, name):
        return F.batch_norm(h, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
    for stage in range(1, 5):
        for b in range(2):
            p = f"layer{stage}.{b}"
            stride = 2 if (stage > 1 and b == 0) else 1
            out = F.relu(bn(F.conv2d(h, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            short = bn(F.conv2d(h, state[f"{p}.shortcut.0.weight"], stride=stride), f"{p}.shortcut.1") \
                if f"{p}.shortcut.0.weight" in state else h
            h = F.relu(out + short)
    return F.linear(h.mean(dim=(2, 3)), state["fc.weight"], state["fc.bias"])


def test_openood_resnet18_loads_openood_layout_checkpoints_and_computes_their_forward(tmp_path):
    ckpt = openood_layout_checkpoint(tmp_path / "best.ckpt", classes=10)
    state = torch.load(ckpt, weights_only=True)
    cfg = make_cfg(tmp_path, ["model=openood_resnet18_32x32", "data=cifar10"])
    model = load_classifier(cfg.model, 10, checkpoint=str(ckpt)).eval()
    assert set(model.state_dict()) == set(state)  # exactly OpenOOD's keys: nothing missing, nothing extra
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), _openood_forward(state, x), atol=1e-4)
    assert cfg.model.head == "fc" and resolve_layers(model, cfg.model.layer_sets.default) == [
        "layer3.0", "layer3.1", "layer4.0"]
    # c2ir's own resnet18 names its head `linear`: OpenOOD's checkpoint is refused with the keys that differ
    other = make_cfg(tmp_path, ["model=resnet18", "data=cifar10"])
    with pytest.raises(C2IRError, match=r"missing keys \[linear\.bias, linear\.weight\]; unexpected keys \[fc\.bias"):
        load_classifier(other.model, 10, checkpoint=str(ckpt))


def test_a_model_without_batchnorm_is_one_line_before_any_stage():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(C2IRError, match=r"^model mlp has no BatchNorm layers with running statistics: the impressions "
                                        r".*c2ir\.detector\('energy', model\)\.fit\(\)$"):
        require_batchnorm(mlp, "mlp")
    require_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), "cnn")  # no error


def test_logit_detectors_need_no_batchnorm_in_the_api():
    """What the BatchNorm message offers works: an Energy detector on a BN-free model, from the API."""
    import c2ir

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    det = c2ir.detector("energy", mlp).fit()
    assert det.score(torch.randn(5, 3, 2, 2)).shape == (5,)


# the timm tests need the optional extra (pip install -e ".[timm]"); each skips without it


def test_timm_model_by_name_loads_a_local_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    timm = pytest.importorskip("timm")
    cfg = make_cfg(tmp_path, ["model=timm", "model.name=resnet18", "data=cifar10"])
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "model.safetensors"))
    model = load_classifier(cfg.model, 10, checkpoint=str(tmp_path / "model.safetensors")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    layers = resolve_layers(model, cfg.model.layer_sets.default)  # [auto]: the middle residual blocks
    assert layers and all(n.startswith("layer") for n in layers)
    fresh = load_classifier(cfg.model, 10)  # no checkpoint: timm's random init, nothing downloaded
    assert fresh.fc.out_features == 10


def test_timm_errors_are_one_line(tmp_path):
    pytest.importorskip("timm")
    with pytest.raises(C2IRError, match="unknown timm model model.name='no_such_net'"):
        load_classifier(make_cfg(tmp_path, ["model=timm", "model.name=no_such_net", "data=cifar10"]).model, 10)


def test_c2ir_run_on_a_timm_model_without_batchnorm_says_why_before_training(tmp_path):
    from c2ir.stages import run
    from c2ir.stages.job import cli_job

    pytest.importorskip("timm")
    cfg = make_cfg(tmp_path, ["model=timm", "model.name=vit_tiny_patch16_224", "data=cifar10", "data.image_size=224",
                              "ood=[gaussian_noise]", "detectors=[energy]"])
    with pytest.raises(C2IRError, match="model vit_tiny_patch16_224 has no BatchNorm layers"):
        run.run(cli_job(cfg))
    assert not (tmp_path / "cache" / "train").exists()


def test_timm_missing_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(C2IRError, match=r"model=timm needs the timm package: pip install 'c2ir\[timm\]'"):
        load_classifier(make_cfg(tmp_path, ["model=timm", "data=cifar10"]).model, 10)
