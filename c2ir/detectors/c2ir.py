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

NORMALIZATIONS = ("impression_z", "impression_std", "none")


def impression_scale(raw_imp: torch.Tensor, normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, spread) per column of the impressions' own deviations (N, L), for `normalize`."""
    if normalize not in NORMALIZATIONS:
        raise C2IRError(f"c2ir.normalize={normalize!r}; choose impression_z, impression_std or none")
    cols = raw_imp.shape[1]
    loc = raw_imp.mean(0) if normalize == "impression_z" else torch.zeros(cols, dtype=raw_imp.dtype)
    spread = raw_imp.std(0).clamp(min=1e-12) if normalize != "none" else torch.ones(cols, dtype=raw_imp.dtype)
    return loc, spread


def combine(raw: torch.Tensor, loc: torch.Tensor, spread: torch.Tensor, weights: torch.Tensor,
            logit: torch.Tensor | None = None, logit_imp: torch.Tensor | None = None,
            logit_weight: float = 0.0) -> torch.Tensor:
    """S = sum_l w_l (d_l - loc_l) / spread_l [+ logit_weight * z-score of `logit` on `logit_imp`] (pure)."""
    score = ((raw - loc) / spread) @ weights.to(raw.dtype)
    if logit is not None and logit_imp is not None:
        score = score + logit_weight * (logit - logit_imp.mean()) / logit_imp.std().clamp(min=1e-12)
    return score


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
        self.loc, self.spread = impression_scale(self.layer_deviations(ctx.impressions), self.normalize)
        self.logit_imp = (None if self.logit_score == "none"
                          else LOGIT_SCORES[self.logit_score](ctx.impressions["logits"]))

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

    def _score(self, feats):
        logit = None if self.logit_imp is None else LOGIT_SCORES[self.logit_score](feats["logits"])
        return combine(self.layer_deviations(feats), self.loc, self.spread, self.weights,
                       logit, self.logit_imp, self.logit_weight)
