"""Maximum logit (Hendrycks et al., "Scaling Out-of-Distribution Detection", ICML 2022)."""

from c2ir.detectors.base import Detector


class MaxLogit(Detector):
    def _score(self, feats):
        return -feats["logits"].double().max(dim=1).values
