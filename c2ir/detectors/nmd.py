"""Neural Mean Discrepancy, data-free form (after Dong et al., CVPR 2022).

Per BatchNorm layer, the input's channel means are compared with the layer's running
means, standardised by the running std; the score averages the per-layer RMS
discrepancy. Unconditional (no class information) and needs no data at all: the
closest prior data-free feature method to C2IR.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import BN_MEANS, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.errors import C2IRError
from c2ir.extraction import bn_layers


@register_detector("nmd")
class NMD(Detector):
    """RMS of BN-input channel means standardised by the running statistics, averaged over BN layers.
    Data-free; fits on the model alone (its BatchNorm running statistics)."""

    requires_fit = True

    def __init__(self, name: str = "nmd", *, fit_on: str = "none") -> None:
        super().__init__(name, fit_on=fit_on)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({BN_MEANS})

    def _fit(self, data: FitData) -> None:
        if data.model is None:
            raise C2IRError("nmd needs the model's BatchNorm running statistics")
        modules = dict(data.model.named_modules())
        self.bn = {}
        for n in bn_layers(data.model):
            m = modules[n]
            self.bn[n] = (m.running_mean.detach().cpu().float(), torch.sqrt(m.running_var.detach().cpu().float() + m.eps))
        if not self.bn:
            raise C2IRError("nmd needs BatchNorm layers with running statistics; this model has none")

    def _score(self, feats):
        per_layer = []
        for name, (mean, std) in self.bn.items():
            key = f"bn/{name}"
            if key not in feats:
                raise C2IRError(f"nmd: cached features lack BatchNorm input means for {name}")
            per_layer.append(torch.sqrt((((feats[key].float() - mean) / std) ** 2).mean(dim=1)))
        return torch.stack(per_layer, dim=1).double().mean(dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{i:03d}/{part}/{n}": t for i, (n, pair) in enumerate(self.bn.items())
                for part, t in zip(("mean", "std"), pair)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        found = sorted(k.split("/", 2) for k in tensors if k.split("/", 2)[1] == "mean")
        self.bn = {n: (tensors[f"{i}/mean/{n}"], tensors[f"{i}/std/{n}"]) for i, _, n in found}
        super().load_state(tensors)
