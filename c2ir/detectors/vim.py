"""ViM: virtual-logit matching (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit
Matching", CVPR 2022, arXiv 2203.10807).

Origin o = -pinv(W) b (the point the head maps to zero logits); principal space P = the top-D
eigenvectors of the fit set's uncentred second moment of (h - o); residual r(x) = ||(h - o) - P P^T (h - o)||.
The virtual logit alpha * r(x) is matched to the real logits by
    alpha = mean_fit max_c f_c(x) / mean_fit r(x),
and the score is the virtual logit's softmax log-odds,
    alpha r(x) - logsumexp(f(x))        (higher = more OOD).
Paper rule for D: 1000 if the feature dimension N >= 2048, 512 if N >= 768, else N/2. The original
fits P and alpha on ID training data; with `fit_on: impressions` both come from the impressions.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.head import head_params
from c2ir.errors import C2IRError


def principal_dim(feature_dim: int) -> int:
    """The paper's choice of the principal-space dimension."""
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


def residual_basis(centred: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, N - dim) orthonormal basis of the complement of the top-`dim` eigenvectors of X^T X / n."""
    x = centred.double()
    eigval, eigvec = torch.linalg.eigh(x.T @ x / len(x))
    order = eigval.argsort(descending=True)
    return eigvec[:, order[dim:]]


def residual_norm(h: torch.Tensor, origin: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    return ((h.double() - origin) @ basis).norm(dim=1)


@register_detector("vim")
class ViM(AttributeState, Detector):
    state_attrs = ('origin', 'basis', 'alpha')
    scalar_attrs = ('alpha',)
    requires_fit = True
    limits = {"dim": ">= 1"}

    def __init__(self, name: str = "vim_imp", *, fit_on: str = "impressions", dim: int | None = None) -> None:
        super().__init__(name, fit_on=fit_on)
        self.dim = None if dim is None else int(dim)

    def _fit(self, data: FitData) -> None:
        weight, bias = head_params(data, self.name)
        bundle = self.source(data)
        h = bundle["penultimate"].double()
        n_features = h.shape[1]
        dim = principal_dim(n_features) if self.dim is None else self.dim
        if not 0 < dim < n_features:
            raise C2IRError(f"detector {self.name}: dim={dim} must be between 1 and {n_features - 1} "
                            f"(the penultimate layer has {n_features} features)")
        self.origin = -(torch.linalg.pinv(weight.double()) @ bias.double())
        self.basis = residual_basis(h - self.origin, dim)
        r = residual_norm(h, self.origin, self.basis)
        max_logit = bundle["logits"].double().max(dim=1).values
        self.alpha = float(max_logit.mean() / r.mean().clamp_min(1e-12))

    def _score(self, feats):
        virtual = self.alpha * residual_norm(feats["penultimate"], self.origin, self.basis)
        return virtual - torch.logsumexp(feats["logits"].double(), dim=1)
