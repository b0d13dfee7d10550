"""ODIN (Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in
Neural Networks", ICLR 2018, arXiv 1706.02690): temperature scaling plus a small input perturbation.

    x~ = x - eps * sign(-grad_x log S_yhat(x; T))        (the paper's Eq. 2)
    score(x) = -max_c S_c(x~; T)                          (higher = more OOD)

with S(x; T) = softmax(f(x) / T). The step is taken in pixel units ([0, 1] scale), which is the
paper code's step in normalised space divided by the per-channel std. Neither the paper nor its
code clamps x~ to the valid pixel range; `clamp: true` does (an option, default off).
Needs one backward pass per input, so it scores images (`score_images`), not cached features. Temperature and
perturbation size are config values (the paper's T = 1000, eps = 0.0014), not tuned on OOD data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from c2ir.data.imageset import Normalizer
from c2ir.detectors.base import Detector
from c2ir.detectors.registry import register_detector
from c2ir.extraction import gradient_batches


@register_detector("odin")
class ODIN(Detector):
    """Negative max softmax at temperature T after a step of size epsilon that raises it.

    Args:
        temperature: T (the paper's 1000).
        epsilon: perturbation size in pixel units ([0, 1] scale).
        clamp: clamp the perturbed image to [0, 1] (default off: the paper's and its code's form).
    """

    needs_input_gradients = True

    limits = {"temperature": "> 0", "epsilon": ">= 0"}

    def __init__(self, name: str = "odin", *, fit_on: str = "none", temperature: float = 1000.0,
                 epsilon: float = 0.0014, clamp: bool = False) -> None:
        super().__init__(name, fit_on=fit_on)
        self.temperature, self.epsilon, self.clamp = float(temperature), float(epsilon), bool(clamp)

    def score_images(self, model: nn.Module, normalizer: Normalizer, images: torch.Tensor, batch_size: int = 256,
                     device: torch.device | str = "cpu", **_: object) -> np.ndarray:
        """Scores of pixel images: uint8 in [0, 255] or float in [0, 1], (N, C, H, W).
        The model's training flags and `requires_grad` are restored afterwards."""
        self._check_fitted()

        def step(x: torch.Tensor, _span: slice) -> torch.Tensor:
            logits = model(normalizer(x)) / self.temperature
            loss = F.cross_entropy(logits, logits.argmax(1))  # -log S_yhat(x; T)
            (grad,) = torch.autograd.grad(loss, x)
            x_tilde = x - self.epsilon * grad.sign()  # move to raise the top softmax score
            if self.clamp:
                x_tilde = x_tilde.clamp(0, 1)
            with torch.no_grad():
                probs = torch.softmax(model(normalizer(x_tilde)).double() / self.temperature, dim=1)
            return -probs.max(1).values.cpu()

        return torch.cat(gradient_batches(model, images, step, batch_size=batch_size, device=device,
                                          desc=self.name)).numpy()
