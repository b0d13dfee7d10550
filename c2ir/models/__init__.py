"""Model zoo: architectures by config name, plus checkpoint loading."""

from __future__ import annotations

from typing import Any

from torch import nn

from c2ir.errors import C2IRError
from c2ir.models.checkpoints import load_into, read_checkpoint
from c2ir.models.cifar_resnet import CifarResNet
from c2ir.models.densenet import DenseNet3
from c2ir.models.openood_resnet import OpenOODResNet18
from c2ir.models.resnet import resnet18, resnet34
from c2ir.models.small_cnn import SmallCNN
from c2ir.models.timm_models import build_timm
from c2ir.models.wide_resnet import WideResNet


def published_weights(cfg: Any) -> str | None:
    """The torchvision weights name a model is used with as it is (no checkpoint given), else None."""
    if cfg.get("arch") != "torchvision" or cfg.get("checkpoint"):
        return None
    return str(cfg.weights) if cfg.get("weights") else None


def _torchvision(cfg: Any, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    name = cfg.get("name")
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise C2IRError(f"unknown torchvision classifier model.name={name!r}; see torchvision.models.list_models()")
    # a checkpoint replaces the published weights: build the bare architecture (no download, works offline)
    weights = None if cfg.get("checkpoint") else cfg.get("weights")
    try:
        return torchvision.models.get_model(name, weights=weights, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - download failures and bad weight names alike
        raise C2IRError(
            f"cannot build torchvision model {name} with weights={weights!r}: {exc}; "
            "without internet set model.checkpoint=<file> (e.g. torchvision's downloaded .pth)"
        ) from exc


ARCHITECTURES = {
    "small_cnn": lambda c, k, ch: SmallCNN(ch, k, int(c.get("width", 16))),
    "cifar_resnet": lambda c, k, ch: CifarResNet(int(c.depth), k, ch),
    "resnet18": lambda c, k, ch: resnet18(k, ch),
    "resnet34": lambda c, k, ch: resnet34(k, ch),
    "openood_resnet18_32x32": lambda c, k, ch: OpenOODResNet18(k, ch),
    "wide_resnet": lambda c, k, ch: WideResNet(int(c.depth), int(c.widen_factor), k, ch, float(c.get("drop_rate", 0.0))),
    "densenet": lambda c, k, ch: DenseNet3(int(c.depth), k, int(c.get("growth", 12)), float(c.get("reduction", 0.5)), ch),
    "torchvision": _torchvision,
    "timm": build_timm,
}


def build_model(model_cfg: Any) -> nn.Module:
    """Instantiate the architecture named by `model.arch` (weights not loaded)."""
    arch = model_cfg.arch
    if arch not in ARCHITECTURES:
        raise C2IRError(f"unknown model.arch={arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](model_cfg, int(model_cfg.num_classes), int(model_cfg.in_channels))


def load_checkpoint(model: nn.Module, model_cfg: Any, path: str) -> None:
    """Load `path` into `model` with the safety and error rules of `checkpoints`."""
    state = read_checkpoint(path, trust=bool(model_cfg.get("trust_checkpoint", False)))
    load_into(model, state, str(path), str(model_cfg.get("name", model_cfg.arch)))


def head_module(model: nn.Module, name: str | None) -> nn.Linear:
    """The final linear layer, whose input is the penultimate feature vector."""
    if name:
        module = dict(model.named_modules()).get(name)
        if not isinstance(module, nn.Linear):
            raise C2IRError(f"model.head={name!r} is not a Linear module of this model")
        return module
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise C2IRError("the model has no Linear layer; set model.head to its classifier module")
    return linears[-1]


__all__ = ["build_model", "load_checkpoint", "head_module", "published_weights", "ARCHITECTURES"]
