"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

import torch

from c2ir.detectors.base import Detector


class MSP(Detector):
    def _score(self, feats):
        return -torch.softmax(feats["logits"].double(), dim=1).max(dim=1).values
