"""ODIN (Liang et al., ICLR 2018): temperature scaling plus a small input perturbation.

Needs one backward pass per input, so it is the one detector that does not score from
cached features. Temperature and perturbation size are config values, not tuned on OOD data.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from c2ir.data.imageset import Normalizer
from c2ir.detectors.base import Detector


class ODIN(Detector):
    needs_input_gradients = True

    def _score(self, feats):
        raise NotImplementedError("ODIN scores images (score_images), not cached features")

    def score_images(self, model: nn.Module, normalizer: Normalizer, images: torch.Tensor,
                     batch_size: int = 256, device: torch.device | str = "cpu") -> np.ndarray:
        temperature = float(self.params.get("temperature", 1000.0))
        eps = float(self.params.get("epsilon", 0.0014))
        model.eval()
        out = []
        for start in tqdm(range(0, len(images), batch_size), desc="odin", leave=False, disable=not sys.stderr.isatty()):
            x = images[start:start + batch_size].to(device).float().div(255.0).requires_grad_(True)
            logits = model(normalizer(x)) / temperature
            loss = F.cross_entropy(logits, logits.argmax(1))  # -log S_yhat(x; T)
            (grad,) = torch.autograd.grad(loss, x)
            x_tilde = (x - eps * grad.sign()).clamp(0, 1)  # move to raise the top softmax score
            with torch.no_grad():
                probs = torch.softmax(model(normalizer(x_tilde)).double() / temperature, dim=1)
            out.append(-probs.max(1).values.cpu())
        return torch.cat(out).numpy()
