"""Maximum logit (Hendrycks et al., "Scaling Out-of-Distribution Detection", ICML 2022)."""

from __future__ import annotations

from c2ir.detectors.base import Detector
from c2ir.detectors.registry import register_detector
from c2ir.detectors.logits import maxlogit


@register_detector("maxlogit")
class MaxLogit(Detector):
    """Negative maximum logit. Data-free, no parameters."""

    def __init__(self, name: str = "maxlogit", *, fit_on: str = "none") -> None:
        super().__init__(name, fit_on=fit_on)

    def _score(self, feats):
        return maxlogit(feats["logits"])
