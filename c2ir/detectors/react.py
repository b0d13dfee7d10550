"""ReAct (Sun et al., NeurIPS 2021): clip penultimate activations at a percentile of the fit
set's activations, then score with Energy through the classifier head."""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.logits import energy
from c2ir.errors import C2IRError


@register_detector("react")
class ReAct(Detector):
    """Energy of the head applied to penultimate features clipped at a fit-set percentile.

    Args:
        fit_on: `id_train` (full access, the paper's setting) or `impressions` (data-free).
        percentile: clip level, as a percentile of the fit set's penultimate activations.
        temperature: of the Energy score.
    """

    limits = {"temperature": "> 0"}
    requires_fit = True

    def __init__(self, name: str = "react", *, fit_on: str = "id_train", percentile: float = 90.0,
                 temperature: float = 1.0) -> None:
        super().__init__(name, fit_on=fit_on)
        if not 0.0 < float(percentile) <= 100.0:
            raise C2IRError(f"{name}.percentile={percentile}; choose a value in (0, 100]")
        self.percentile, self.temperature = float(percentile), float(temperature)

    def _fit(self, data: FitData) -> None:
        if data.head is None:
            raise C2IRError("react needs the model's classifier head")
        acts = self.source(data)["penultimate"].float().flatten()
        sample = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        self.threshold = float(torch.quantile(sample, self.percentile / 100.0))
        self.weight = data.head.weight.detach().cpu().float()
        self.bias = None if data.head.bias is None else data.head.bias.detach().cpu().float()

    def _score(self, feats):
        h = feats["penultimate"].float().clamp(max=self.threshold)
        logits = torch.nn.functional.linear(h, self.weight, self.bias)
        return energy(logits, self.temperature)

    def state(self) -> dict[str, torch.Tensor]:
        out = {"clip": torch.tensor([self.threshold], dtype=torch.float64), "weight": self.weight}
        return out if self.bias is None else {**out, "bias": self.bias}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.threshold = float(tensors["clip"][0])
        self.weight, self.bias = tensors["weight"], tensors.get("bias")
        super().load_state(tensors)
