"""C2IR (Chen et al., "Detecting Out-of-distribution Examples via Class-conditional Impressions
Reappearing", ICASSP 2023, arXiv 2303.09746).

For each selected layer l, the deviation d_l(x) is an IPM between the input's features
and the impression statistics of its predicted class; deviations are brought to a common
scale on the impressions themselves and combined with the MGI layer weights:

    S(x) = sum_l w_l * n_l(d_l(x))  [+ logit_weight * n_0(logit score)]

Higher S means more likely OOD. The optional logit term (e.g. Energy, z-scored on the
impressions) is a data-free variant: it uses nothing but the model and the impressions.
Normalisation `impression_z` maps d_l to (d_l - mean) / std over the impressions' own
deviations; `impression_std` divides by that std; `none` leaves raw deviations.
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import Detector, FitContext
from c2ir.detectors.energy import energy
from c2ir.errors import C2IRError
from c2ir.features import FeatureBundle
from c2ir.ipm import get_ipm

LOGIT_SCORES = {
    "energy": lambda logits: energy(logits),
    "msp": lambda logits: -torch.softmax(logits.double(), 1).max(1).values,
    "maxlogit": lambda logits: -logits.double().max(1).values,
}


class C2IR(Detector):
    requires_fit = True

    def _fit(self, ctx: FitContext) -> None:
        if ctx.class_stats is None or ctx.impressions is None:
            raise C2IRError("c2ir needs impression statistics: run collect-stats (or `c2ir run`) first")
        self.stats = ctx.class_stats
        self.layers = list(self.stats.layers)
        weights = ctx.layer_weights if ctx.layer_weights is not None else torch.ones(len(self.layers))
        if len(weights) != len(self.layers):
            raise C2IRError(f"c2ir: {len(weights)} MGI weights for {len(self.layers)} layers; rerun weight-layers")
        self.weights = weights.double()
        ipm_cfg = dict(ctx.ipm or {})
        self.ipm = get_ipm(str(ipm_cfg.get("name", self.params.get("ipm", "mean_l2"))))
        self.extra = {n: self.ipm.prepare(self.stats[n], seed=int(ipm_cfg.get("seed", 0)),
                                          projections=int(ipm_cfg.get("projections", 64)))
                      for n in self.layers}
        self.normalize = str(self.params.get("normalize", "impression_z"))
        self.logit_score = str(self.params.get("logit_score", "none"))
        self.logit_weight = float(self.params.get("logit_weight", 1.0))
        if self.logit_score not in ("none", *LOGIT_SCORES):
            raise C2IRError(f"c2ir.logit_score={self.logit_score!r}; choose none, {', '.join(LOGIT_SCORES)}")
        raw = self.layer_deviations(ctx.impressions)
        self.loc = raw.mean(0) if self.normalize == "impression_z" else torch.zeros(raw.shape[1], dtype=raw.dtype)
        self.spread = raw.std(0).clamp(min=1e-12) if self.normalize != "none" else torch.ones(raw.shape[1], dtype=raw.dtype)
        if self.normalize not in ("impression_z", "impression_std", "none"):
            raise C2IRError(f"c2ir.normalize={self.normalize!r}; choose impression_z, impression_std or none")
        if self.logit_score != "none":
            s = LOGIT_SCORES[self.logit_score](ctx.impressions["logits"])
            self.logit_loc, self.logit_spread = s.mean(), s.std().clamp(min=1e-12)

    def layer_deviations(self, feats: FeatureBundle, chunk: int = 1024) -> torch.Tensor:
        """(N, L) raw IPM deviations of each input from its predicted class, per layer."""
        pred = feats["logits"].argmax(1)
        cols = []
        for name in self.layers:
            pooled = feats[f"layer/{name}"].float()
            spatial = feats.get(f"spatial/{name}")
            parts = []
            for s in range(0, len(pred), chunk):
                sp = None if spatial is None else spatial[s:s + chunk].float()
                parts.append(self.ipm(pooled[s:s + chunk], sp, self.stats[name], pred[s:s + chunk], self.extra[name]))
            cols.append(torch.cat(parts).double())
        return torch.stack(cols, dim=1)

    def normalized_deviations(self, feats: FeatureBundle) -> torch.Tensor:
        return (self.layer_deviations(feats) - self.loc) / self.spread

    def _score(self, feats):
        score = self.normalized_deviations(feats) @ self.weights
        if self.logit_score != "none":
            z = (LOGIT_SCORES[self.logit_score](feats["logits"]) - self.logit_loc) / self.logit_spread
            score = score + self.logit_weight * z
        return score
