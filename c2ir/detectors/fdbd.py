"""fDBD: decision-boundary distance regularised by the deviation from the mean feature (Liu & Qin,
"Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024, arXiv 2312.11536; the
authors' code github.com/litianliu/fDBD-OOD, in OpenOOD v1.5 as `fdbd_postprocessor.py`, was read
for the formula only).

For the penultimate feature z, the head's logits f_k(z) = w_k^T z + b_k and the predicted class
c = argmax_k f_k(z), the distance of z to the decision boundary between c and another class j has
the closed form (the paper's lower bound of the boundary distance; exact for a linear head)

    D(z, j) = |f_c(z) - f_j(z)| / ||w_c - w_j||_2 ,

and the score is their average, regularised by how far z lies from the mean feature mu:

    fDBD(x) = 1 / (K - 1) * sum_{j != c} D(z, j) / ||z - mu||_2        (higher = more ID)

Here the score is -fDBD (higher = more OOD). The only statistic of data is mu: the mean of the ID
training features (`fdbd`, full access, the paper's setting) or of the impressions (`fdbd_imp`,
data-free). `regularizer: mean_distance` (default) is the paper's ||z - mu||; `norm` divides by
||z|| instead (the alternative OpenOOD's implementation offers), which uses no fit data at all.
The paper has no other parameter.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.head import head_params
from c2ir.errors import C2IRError
from c2ir.extraction import batches

REGULARIZERS = ("mean_distance", "norm")


def boundary_distance(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N,) mean over j != c of |f_c - f_j| / ||w_c - w_j|| for each row of z (pure, float64)."""
    z, weight, bias = z.double(), weight.double(), bias.double()
    logits = z @ weight.T + bias
    c = logits.argmax(dim=1)
    gaps = logits.gather(1, c[:, None]) - logits                       # (N, K), zero at j = c
    pair = torch.cdist(weight, weight)                                  # (K, K) ||w_i - w_j||
    pair = pair + torch.eye(len(weight), dtype=pair.dtype)              # j = c: 0 / 1, not 0 / 0
    return (gaps / pair[c].clamp_min(1e-12)).sum(dim=1) / (len(weight) - 1)


def fdbd_score(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """-fDBD (higher = more OOD); `mean=None` regularises by ||z|| instead of ||z - mean|| (pure)."""
    z = z.double()
    spread = (z if mean is None else z - mean.double()).norm(dim=1).clamp_min(1e-12)
    return -boundary_distance(z, weight, bias) / spread


@register_detector("fdbd")
class FDBD(AttributeState, Detector):
    """Average distance to the decision boundaries of the predicted class over ||z - mu||, negated.

    Args:
        fit_on: `id_train` (full access, the paper's setting) or `impressions` (data-free): where mu comes from.
        regularizer: `mean_distance` (the paper's ||z - mu||) or `norm` (||z||).
    """

    state_attrs = ('weight', 'bias', 'mean')
    requires_fit = True

    def __init__(self, name: str = "fdbd", *, fit_on: str = "id_train", regularizer: str = "mean_distance") -> None:
        super().__init__(name, fit_on=fit_on)
        if regularizer not in REGULARIZERS:
            raise C2IRError(f"detector {name}: regularizer={regularizer!r}; choose one of {', '.join(REGULARIZERS)}")
        self.regularizer = regularizer

    def _fit(self, data: FitData) -> None:
        self.weight, self.bias = head_params(data, self.name)
        if len(self.weight) < 2:
            raise C2IRError(f"detector {self.name} needs a head with at least 2 classes (decision boundaries)")
        self.mean = self.source(data)["penultimate"].double().mean(dim=0)

    def _score(self, feats):
        z = feats["penultimate"]
        mean = self.mean if self.regularizer == "mean_distance" else None
        return torch.cat([fdbd_score(z[s], self.weight, self.bias, mean) for s in batches(len(z), 4096)])
