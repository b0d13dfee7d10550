"""Deep nearest neighbours (Sun et al., ICML 2022): distance to the k-th nearest normalised
penultimate feature of the fit set. Full access when fitted on ID training data; the
`fit_on=impressions` variant is data-free."""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector, FitContext


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


class KNN(Detector):
    requires_fit = True

    def _fit(self, ctx: FitContext) -> None:
        self.bank = _normalize(self.source(ctx)["penultimate"])
        self.k = min(int(self.params.get("k", 50)), len(self.bank))

    def _score(self, feats):
        x = _normalize(feats["penultimate"])
        out = []
        for start in range(0, len(x), 1024):
            d = torch.cdist(x[start:start + 1024], self.bank)
            out.append(d.topk(self.k, dim=1, largest=False).values[:, -1])
        return torch.cat(out).double()
