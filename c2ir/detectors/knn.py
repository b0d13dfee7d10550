"""Deep nearest neighbours (Sun et al., ICML 2022): distance to the k-th nearest normalised
penultimate feature of the fit set. Full access when fitted on ID training data; the
`fit_on=impressions` variant is data-free."""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.errors import C2IRError
from c2ir.extraction import batches


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


@register_detector("knn")
class KNN(Detector):
    """k-th nearest-neighbour distance in the fit set's L2-normalised penultimate features.

    Args:
        fit_on: `id_train` (full access, the paper's setting) or `impressions` (data-free).
        k: the neighbour rank, at least 1 and at most the fit set's size (a larger k is an error: the
            k-th neighbour would be the farthest point, and the score meaningless).
    """

    limits = {"k": ">= 1"}
    requires_fit = True

    def __init__(self, name: str = "knn", *, fit_on: str = "id_train", k: int = 50) -> None:
        super().__init__(name, fit_on=fit_on)
        self.k = int(k)

    def _fit(self, data: FitData) -> None:
        bank = self.source(data)["penultimate"]
        if self.k > len(bank):
            raise C2IRError(f"detector {self.name}: k={self.k} but it fits on {len(bank)} {self.fit_on} features; "
                            f"choose k <= {len(bank)} (CLI: ++detectors.{self.name}.k=..., API: k=...) or fit on more data")
        self.bank = _normalize(bank)

    def _score(self, feats):
        x = _normalize(feats["penultimate"])
        k = self.k
        if k > len(self.bank):
            raise C2IRError(f"detector {self.name}: k={k} but its neighbour bank holds {len(self.bank)} features; "
                            f"choose k <= {len(self.bank)}")
        return torch.cat([torch.cdist(x[s], self.bank).topk(k, dim=1, largest=False).values[:, -1]
                          for s in batches(len(x), 1024)]).double()

    def state(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.bank = tensors["bank"]
        super().load_state(tensors)
