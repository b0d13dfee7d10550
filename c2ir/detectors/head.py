"""The classifier head as plain tensors, for detectors that re-run it on shaped features (ASH, SCALE, DICE, ViM)."""

from __future__ import annotations

import torch

from c2ir.detectors.base import FitData
from c2ir.errors import C2IRError


def head_params(data: FitData, detector: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) of the final linear layer, float32 on CPU; a zero bias when it has none."""
    if data.head is None:
        raise C2IRError(f"detector {detector} needs the model's final linear layer (FitData.head); "
                        "set model.head to the name of the classifier module")
    weight = data.head.weight.detach().cpu().float()
    bias = torch.zeros(weight.shape[0]) if data.head.bias is None else data.head.bias.detach().cpu().float()
    return weight, bias
