"""Energy score (Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020)."""

from __future__ import annotations

from c2ir.detectors.base import Detector
from c2ir.detectors.registry import register_detector
from c2ir.detectors.logits import energy

__all__ = ["Energy", "energy"]


@register_detector("energy")
class Energy(Detector):
    """E(x) = -T logsumexp(f(x)/T) of the logits. Data-free, no fit.

    Args:
        temperature: T; 1 is the paper's choice without OOD tuning.
    """

    limits = {"temperature": "> 0"}

    def __init__(self, name: str = "energy", *, fit_on: str = "none", temperature: float = 1.0) -> None:
        super().__init__(name, fit_on=fit_on)
        self.temperature = float(temperature)

    def _score(self, feats):
        return energy(feats["logits"], self.temperature)
