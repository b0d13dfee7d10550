"""Neural Mean Discrepancy, data-free form (after Dong et al., CVPR 2022).

Per BatchNorm layer, the input's channel means are compared with the layer's running
means, standardised by the running std; the score averages the per-layer RMS
discrepancy. Unconditional (no class information) and needs no data at all: the
closest prior data-free feature method to C2IR.
"""

from __future__ import annotations

import torch
from torch import nn

from c2ir.detectors.base import Detector, FitContext
from c2ir.errors import C2IRError


class NMD(Detector):
    requires_fit = True

    def _fit(self, ctx: FitContext) -> None:
        if ctx.model is None:
            raise C2IRError("nmd needs the model's BatchNorm running statistics")
        self.bn = {
            n: (m.running_mean.detach().cpu().float(), torch.sqrt(m.running_var.detach().cpu().float() + m.eps))
            for n, m in ctx.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        }

    def _score(self, feats):
        per_layer = []
        for name, (mean, std) in self.bn.items():
            key = f"bn/{name}"
            if key not in feats:
                raise C2IRError(f"nmd: cached features lack BatchNorm input means for {name}")
            per_layer.append(torch.sqrt((((feats[key].float() - mean) / std) ** 2).mean(dim=1)))
        return torch.stack(per_layer, dim=1).double().mean(dim=1)
