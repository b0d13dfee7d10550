"""KL matching (Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, "Scaling
Out-of-Distribution Detection for Real-World Settings", ICML 2022, arXiv 1911.11132).

Template d_k = mean softmax posterior of the fit samples predicted as class k; the score is the
distance of an input's posterior to the closest template,
    min_k KL(p(x) || d_k)        (higher = more OOD).
The original fits the templates on ID validation data; with `fit_on: impressions` they are the
impressions' mean posteriors (data-free). Classes no fit sample is predicted as have no template.
No hyper-parameters.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.errors import C2IRError


def class_templates(logits: torch.Tensor) -> torch.Tensor:
    """(K', C) mean softmax per predicted class, for the K' classes that are predicted at least once."""
    p = torch.softmax(logits.double(), dim=1)
    pred = p.argmax(dim=1)
    return torch.stack([p[pred == k].mean(dim=0) for k in pred.unique(sorted=True)])


def kl_to_templates(logits: torch.Tensor, templates: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """min over templates of KL(softmax(logits) || template), per row."""
    logp = torch.log_softmax(logits.double(), dim=1)
    logq = templates.clamp_min(eps).log()
    kl = (logp.exp()[:, None, :] * (logp[:, None, :] - logq[None])).sum(dim=2)  # (N, K')
    return kl.min(dim=1).values


@register_detector("kl_matching")
class KLMatching(AttributeState, Detector):
    state_attrs = ('templates',)
    requires_fit = True

    def __init__(self, name: str = "kl_matching_imp", *, fit_on: str = "impressions") -> None:
        super().__init__(name, fit_on=fit_on)

    def _fit(self, data: FitData) -> None:
        logits = self.source(data)["logits"]
        if len(logits) == 0:
            raise C2IRError(f"detector {self.name}: no {self.fit_on} samples to fit class templates on")
        self.templates = class_templates(logits)

    def _score(self, feats):
        return kl_to_templates(feats["logits"], self.templates)
