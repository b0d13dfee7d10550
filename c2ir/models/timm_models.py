"""Any timm classifier by name (`model=timm model.name=<timm model>`), an optional dependency.

timm (`pip install 'c2ir[timm]'`) is imported only when such a model is built. Weights come from
`model.checkpoint` (a torch.save state dict, or timm's/Hugging Face's `model.safetensors`): nothing is
downloaded. Without a checkpoint the model starts from timm's random initialisation and, like every zoo
architecture, `c2ir run` first trains it on the ID train split.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from c2ir.errors import C2IRError


def build_timm(cfg: Any, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise C2IRError("model=timm needs the timm package: pip install 'c2ir[timm]' (or pip install timm)") from None
    name = cfg.get("name")
    if not name or not timm.is_model(str(name)):
        raise C2IRError(f"unknown timm model model.name={name!r}; choose one of timm.list_models() (e.g. model.name=resnet18)")
    try:  # pretrained=False: no download; the weights come from model.checkpoint
        return timm.create_model(str(name), pretrained=False, num_classes=int(num_classes), in_chans=int(in_channels))
    except Exception as exc:  # noqa: BLE001 - timm raises many types for unsupported arguments
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise C2IRError(f"cannot build timm model {name} with {num_classes} classes and {in_channels} input channels "
                        f"({why}); check model.name and data.num_classes / data.channels") from exc
