"""GAIA-A and GAIA-Z (Chen, Li, Qu, Wang, Wan & Xiao, "GAIA: Delving into Gradient-based
Attribution Abnormality for Out-of-distribution Detection", NeurIPS 2023, arXiv 2311.09620).

Both read the gradients that an attribution method (GradCAM) would use, at the outputs of
BatchNorm layers, and need no data: they score images with one forward and one (GAIA-Z) or two
(GAIA-A) backward passes. Formulas as in the paper and the authors' public code
(github.com/JGEthanChen/GAIA-OOD, `cal_method.py` and `hook.py`; read for the formulas, not copied):

- GAIA-Z, zero-deflation abnormality. G_l = d(max_k z_k)/dA_l at every BatchNorm output A_l
  (N, C, H, W); r_{l,c} = share of the H*W positions where G_l is non-zero; score =
  mean over all (l, c) of r_{l,c}^2. In-distribution inputs leave many zero partial derivatives
  (inactive ReLUs behind the BN); OOD inputs "deflate" the zeros, so a higher score = more OOD.
- GAIA-A, channel-wise average abnormality. Output component o = sqrt(mean_d |g_d|) with
  g = d(sum_k log softmax_k)/dh at the head's input h (the paper takes the spatial mean of the
  gradient at the last feature map, which is g / (H*W): the same ranking). Inner component
  a_{l,c} = |spatial mean of d(sum_d h_d)/dA_l| at the BatchNorm outputs of the last two stages
  (ResNet-34 in the paper: layer3 and layer4; every BatchNorm for models without stages, as the
  paper does for WRN-40-2); score = mean over (l, c) of (a_{l,c} / o)^2.

The paper negates both values so that higher means in-distribution; here higher = more OOD.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from c2ir.data.imageset import Normalizer
from c2ir.detectors.base import Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.errors import C2IRError
from c2ir.extraction import ForwardHooks, bn_layers, gradient_batches
from c2ir.models import head_module

__all__ = ["GAIAA", "GAIAZ", "gaia_a_score", "gaia_z_score", "gaia_bn_layers"]


def gaia_z_score(grads: list[torch.Tensor]) -> torch.Tensor:
    """mean over (layer, channel) of (share of non-zero spatial gradients)^2; grads: [(N, C_l, H, W)] (pure)."""
    ratios = torch.cat([(g != 0).double().mean(dim=(-1, -2)) for g in grads], dim=1)
    return ratios.pow(2).mean(dim=1)


def gaia_a_score(inner: list[torch.Tensor], head_grad: torch.Tensor) -> torch.Tensor:
    """mean over (layer, channel) of (|spatial-mean gradient| / sqrt(mean |head-input gradient|))^2 (pure).

    inner: [(N, C_l, H, W)] gradients of sum(h) at the chosen BN outputs; head_grad: (N, D) gradient
    of sum_k log softmax_k at the head's input h."""
    out = head_grad.double().abs().mean(dim=1).sqrt().clamp(min=1e-30)[:, None]
    a = torch.cat([g.double().mean(dim=(-1, -2)).abs() for g in inner], dim=1)
    return (a / out).pow(2).mean(dim=1)


def gaia_bn_layers(model: nn.Module, last_stages: int) -> list[str]:
    """Names of the BatchNorm layers GAIA reads (`bn_layers`, the one place BN layers are found): all
    of them (last_stages=0 or a model without `layer<i>` stages), else those inside the last
    `last_stages` stages."""
    bns = bn_layers(model)
    if not bns:
        raise C2IRError("GAIA reads BatchNorm outputs, and this model has none; choose another detector")
    stages = sorted({int(m.group(1)) for n in bns if (m := re.match(r"layer(\d+)\.", n))})
    if last_stages <= 0 or not stages:
        return bns
    keep = {f"layer{s}." for s in stages[-last_stages:]}
    return [n for n in bns if any(n.startswith(k) for k in keep)]


class _GAIA(Detector):
    """Shared image loop: capture the chosen BN outputs (and the head input) and score each batch."""

    needs_input_gradients = True
    last_stages: int = 0
    head: nn.Module | None = None   # the model's final linear layer when the fit names it (FitData.head)

    def _fit(self, data: FitData) -> None:
        self.head = data.head

    def score_images(self, model: nn.Module, normalizer: Normalizer, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | str = "cpu", *, head: nn.Linear | None = None, **_: object) -> np.ndarray:
        """Scores of pixel images: uint8 in [0, 255] or float in [0, 1], (N, C, H, W).
        The model's training flags and `requires_grad` are restored afterwards."""
        self._check_fitted()
        names = gaia_bn_layers(model, self.last_stages)
        modules = dict(model.named_modules())
        head = head or self.head or head_module(model, None)
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str):
            # differentiate w.r.t. the BN output itself: an in-place op after it (ReLU(inplace=True),
            # `out += identity`) would otherwise change the captured tensor and its zeros
            def hook(_m: nn.Module, _i: tuple, o: torch.Tensor) -> torch.Tensor:
                captured[name] = o
                return o.clone()
            return hook

        def head_input(_m: nn.Module, inp: tuple, _o: torch.Tensor) -> None:
            captured["_head"] = inp[0]

        def step(x: torch.Tensor, _span: slice) -> torch.Tensor:
            captured.clear()
            logits = model(normalizer(x))
            return self._batch_score(logits, [captured[n] for n in names], captured["_head"]).cpu()

        with ForwardHooks([*((modules[n], keep(n)) for n in names), (head, head_input)]):
            parts = gradient_batches(model, images, step, batch_size=batch_size, device=device, desc=self.name)
        return torch.cat(parts).numpy()

    def _batch_score(self, logits: torch.Tensor, acts: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_detector("gaia_z")
class GAIAZ(_GAIA):
    """GAIA-Z: zero-deflation abnormality of d(max logit)/d(BatchNorm outputs), every BN layer
    (the paper's CIFAR setting, `-hook bn`). No parameters."""

    def __init__(self, name: str = "gaia_z", *, fit_on: str = "none") -> None:
        super().__init__(name, fit_on=fit_on)

    def _batch_score(self, logits, acts, h):
        grads = torch.autograd.grad(logits.max(dim=1).values.sum(), acts)
        return gaia_z_score(list(grads))


@register_detector("gaia_a")
class GAIAA(_GAIA):
    """GAIA-A: channel-wise average abnormality at the BN outputs of the last `last_stages` stages.

    Args:
        last_stages: how many final `layer<i>` stages are read (the paper's ResNet-34 setting reads
            the last two of four); 0 reads every BatchNorm layer.
    """

    def __init__(self, name: str = "gaia_a", *, fit_on: str = "none", last_stages: int = 2) -> None:
        super().__init__(name, fit_on=fit_on)
        if int(last_stages) < 0:
            raise C2IRError(f"{name}.last_stages={last_stages}; use 0 (every BatchNorm) or a positive count")
        self.last_stages = int(last_stages)

    def _batch_score(self, logits, acts, h):
        (head_grad,) = torch.autograd.grad(torch.log_softmax(logits, dim=1).sum(), h, retain_graph=True)
        inner = torch.autograd.grad(h.sum(), acts)
        return gaia_a_score(list(inner), head_grad)
