"""ReAct (Sun et al., NeurIPS 2021): clip penultimate activations at a percentile of the fit
set's activations, then score with Energy through the classifier head."""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector, FitContext
from c2ir.detectors.energy import energy
from c2ir.errors import C2IRError


class ReAct(Detector):
    requires_fit = True

    def _fit(self, ctx: FitContext) -> None:
        if ctx.head is None:
            raise C2IRError("react needs the model's classifier head")
        acts = self.source(ctx)["penultimate"].float().flatten()
        q = float(self.params.get("percentile", 90.0)) / 100.0
        sample = acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        self.threshold = float(torch.quantile(sample, q))
        self.weight = ctx.head.weight.detach().cpu().float()
        self.bias = None if ctx.head.bias is None else ctx.head.bias.detach().cpu().float()

    def _score(self, feats):
        h = feats["penultimate"].float().clamp(max=self.threshold)
        logits = torch.nn.functional.linear(h, self.weight, self.bias)
        return energy(logits, float(self.params.get("temperature", 1.0)))
