"""The classifier a run uses, built from its config: architecture, weights, and the checks that
catch a wrong or damaged model at load time rather than as a misleading failure stages later.

Why here and not in the stages: loading a checkpoint is library work (the API and scripts
need it too); the stages only decide *which* weights (the train stage's output or
`model.checkpoint`) and cache them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from c2ir.errors import C2IRError
from c2ir.models import build_model, head_module, load_checkpoint


def build_classifier(model_cfg: Any, num_classes: int) -> nn.Module:
    """A fresh (untrained) instance of `model_cfg`'s architecture, after checking it predicts the
    data's `num_classes` (a model config for other data is the usual mistake)."""
    if int(model_cfg.num_classes) != int(num_classes):
        raise C2IRError(
            f"model.num_classes={model_cfg.num_classes} but data.num_classes={num_classes}; "
            "they must agree (choose the model config trained on this data)"
        )
    return build_model(model_cfg)


def check_finite_weights(model: nn.Module, source: str) -> None:
    """A model with NaN/Inf weights makes every later stage diverge with a misleading hint: say so at load."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise C2IRError(f"{source} has non-finite (NaN/Inf) weights in {', '.join(bad[:3])}{more}; "
                        "the checkpoint is damaged: use another checkpoint or retrain it")


def load_classifier(model_cfg: Any, num_classes: int, *, checkpoint: str | None = None,
                    state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """`model_cfg`'s architecture with weights from `state` (a state dict, e.g. the train stage's
    output) or from the file `checkpoint` (checked finite); its head must predict `num_classes`."""
    model = build_classifier(model_cfg, num_classes)
    if state is not None:
        model.load_state_dict(state)
    elif checkpoint:
        load_checkpoint(model, model_cfg, str(checkpoint))
        check_finite_weights(model, f"checkpoint {checkpoint}")
    head = head_module(model, model_cfg.get("head"))
    if head.out_features != int(num_classes):
        raise C2IRError(
            f"the model predicts {head.out_features} classes but data.num_classes={num_classes}; "
            "use a model trained on this data"
        )
    return model
