"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

from __future__ import annotations

from c2ir.detectors.base import Detector
from c2ir.detectors.registry import register_detector
from c2ir.detectors.logits import msp


@register_detector("msp")
class MSP(Detector):
    """Negative maximum softmax probability. Data-free, no parameters."""

    def __init__(self, name: str = "msp", *, fit_on: str = "none") -> None:
        super().__init__(name, fit_on=fit_on)

    def _score(self, feats):
        return msp(feats["logits"])
