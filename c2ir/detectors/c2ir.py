"""C2IR (Chen et al., "Detecting Out-of-distribution Examples via Class-conditional Impressions
Reappearing", ICASSP 2023, arXiv 2303.09746).

For each selected layer l, the deviation d_l(x) is an IPM between the input's features
and the impression statistics of its predicted class; deviations are brought to a common
scale on the impressions themselves and combined with the MGI layer weights:

    S(x) = sum_l w_l * n_l(d_l(x))  [+ logit_weight * n_0(logit score)]

Higher S means more likely OOD. The optional logit term (e.g. Energy, z-scored on the
impressions) is a data-free variant: it uses nothing but the model and the impressions.
Its weight is chosen at fit time by default (`select_logit_weight`): the impressions of each
class are split into two folds; on each fold the detector is fitted on one half, and the other
half (held back, ID) is separated from three proxy outliers made from it (`c2ir.proxies`: 4x4
patch-permuted, blurred, two-class mixtures); the weight of `LOGIT_WEIGHT_GRID` with the best
mean AUROC wins (ties go to the smaller weight). No real ID or OOD data is used.
Normalisation `impression_z` maps d_l to (d_l - mean) / std over the impressions' own
deviations; `impression_std` divides by that std; `none` leaves raw deviations.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from c2ir.detectors.base import (CLASS_STATS, IMPRESSION_IMAGES, LAYER_WEIGHTS, POOLED_LAYERS, SPATIAL, Detector,
                                 FitData)
from c2ir.detectors.logits import LOGIT_SCORES
from c2ir.errors import C2IRError
from c2ir.extraction import FeatureBundle, batches, extract_features
from c2ir.ipm import IPMS, get_ipm
from c2ir.metrics import auroc
from c2ir.proxies import folds, proxy_images
from c2ir.stats import ClassStats, compute_class_stats

log = logging.getLogger(__name__)

NORMALIZATIONS = ("impression_z", "impression_std", "none")
CLASS_WEIGHTINGS = ("argmax", "posterior")
LOGIT_WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0, 4.0)   # candidates of select_logit_weight

__all__ = ["C2IR", "CLASS_WEIGHTINGS", "LOGIT_SCORES", "LOGIT_WEIGHT_GRID", "NORMALIZATIONS", "combine",
           "impression_scale", "posterior_weighted", "select_weight"]


def select_weight(criteria: dict[float, float]) -> float:
    """The weight with the highest criterion; ties go to the smaller weight (pure)."""
    return max(sorted(criteria), key=lambda w: criteria[w])


def posterior_weighted(dev_per_class: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """sum_k softmax(logits)_k * dev_per_class[:, k]: (N, K), (N, K) -> (N,) (pure)."""
    return (dev_per_class * torch.softmax(logits.double(), dim=1).to(dev_per_class.dtype)).sum(dim=1)


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
    """C2IR on cached features: class-conditional IPM deviations, scaled on the impressions, MGI-weighted.

    Args:
        fit_on: `impressions` (the method is data-free by construction).
        ipm: deviation measure, a name of `c2ir.ipm.IPMS` (the CLI passes its `ipm=` group here).
        ipm_seed: seed of the IPM's random constants (bandwidth subsample, projections).
        ipm_projections: random directions of `sliced_wasserstein`.
        normalize: `impression_z`, `impression_std` or `none` (see the module docstring).
        logit_score: optional logit term, `energy`, `msp`, `maxlogit` or `none`.
        logit_weight: weight of the logit term after z-scoring it on the impressions.
        class_weighting: `argmax` (deviation from the predicted class) or `posterior`
            (softmax-weighted deviation over every class).
        select_logit_weight: choose the logit term's weight at fit time from `LOGIT_WEIGHT_GRID`
            with proxy outliers made from the impressions (module docstring); `logit_weight` is
            then unused. On by default (BENCHMARKS section 11: x1 on digits, x4 on the CIFAR
            ResNet-20, chosen without test data); ignored for `logit_score=none` or a distribution
            IPM. Needs the impression images and the model (the CLI and the API provide both).
    """

    limits = {"ipm_projections": ">= 1", "ipm_seed": ">= 0"}
    requires_fit = True

    def __init__(self, name: str = "c2ir", *, fit_on: str = "impressions", ipm: str = "mean_standardized",
                 ipm_seed: int = 0, ipm_projections: int = 64, normalize: str = "impression_z",
                 logit_score: str = "energy", logit_weight: float = 1.0, class_weighting: str = "argmax",
                 select_logit_weight: bool = True) -> None:
        super().__init__(name, fit_on=fit_on)
        get_ipm(str(ipm))  # fail at construction, not at fit
        if normalize not in NORMALIZATIONS:
            raise C2IRError(f"{name}.normalize={normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if logit_score not in ("none", *LOGIT_SCORES):
            raise C2IRError(f"{name}.logit_score={logit_score!r}; choose none, {', '.join(LOGIT_SCORES)}")
        if class_weighting not in CLASS_WEIGHTINGS:
            raise C2IRError(f"{name}.class_weighting={class_weighting!r}; choose one of {', '.join(CLASS_WEIGHTINGS)}")
        self.class_weighting = str(class_weighting)
        # the selection needs a logit term and a pooled IPM; elsewhere `logit_weight` is used as given
        self.select_logit_weight = (bool(select_logit_weight) and logit_score != "none"
                                    and not IPMS[str(ipm)].needs_spatial)
        self.weight_used = float(logit_weight)
        self.selection: dict[float, float] = {}
        self.ipm, self.ipm_seed, self.ipm_projections = str(ipm), int(ipm_seed), int(ipm_projections)
        self.normalize, self.logit_score, self.logit_weight = str(normalize), str(logit_score), float(logit_weight)

    @property
    def needs(self) -> frozenset[str]:
        base = {POOLED_LAYERS, CLASS_STATS, LAYER_WEIGHTS} | ({IMPRESSION_IMAGES} if self.select_logit_weight else set())
        return frozenset(base | {SPATIAL}) if IPMS[self.ipm].needs_spatial else frozenset(base)

    @property
    def may_need(self) -> frozenset[str]:
        """Spatial features too: an `ipm=` sweep may choose a distribution IPM."""
        return self.needs | {SPATIAL}

    def _fit(self, data: FitData) -> None:
        if data.class_stats is None or data.impressions is None:
            raise C2IRError("c2ir needs impression statistics: run collect-stats (or `c2ir run`) first")
        weights = data.layer_weights if data.layer_weights is not None else torch.ones(len(data.class_stats.layers))
        self._setup(data.class_stats, weights)
        self.loc, self.spread = impression_scale(self.layer_deviations(data.impressions), self.normalize)
        self.logit_imp = (None if self.logit_score == "none"
                          else LOGIT_SCORES[self.logit_score](data.impressions["logits"]))
        self.weight_used = self.logit_weight
        counts = torch.bincount(data.impressions["labels"].long()) if self.select_logit_weight else None
        missing = data.impression_images is None or data.model is None or data.head is None or data.normalizer is None
        if counts is not None and missing:
            log.warning("%s: select_logit_weight needs the impression images and the model (fit through "
                        "`c2ir evaluate`/`c2ir run` or c2ir.C2IR); using logit_weight=%g", self.name, self.logit_weight)
        elif counts is not None and int(counts[counts > 0].min()) < 4:
            log.warning("%s: select_logit_weight needs at least 4 impressions per class (2 per fold) (got %d); using "
                        "logit_weight=%g", self.name, int(counts[counts > 0].min()), self.logit_weight)
        elif self.select_logit_weight:
            self.selection = self.proxy_criteria(data)
            self.weight_used = select_weight(self.selection)
            log.info("%s: Energy weight x%g chosen on proxy outliers (criterion %s)", self.name, self.weight_used,
                     ", ".join(f"x{w:g}: {c:.1f}" for w, c in self.selection.items()))

    def proxy_criteria(self, data: FitData) -> dict[float, float]:
        """Criterion per candidate weight: mean AUROC (%) of held-back impressions vs proxy outliers
        made from them, over the three proxies and both folds (module docstring)."""
        if data.impression_images is None or data.model is None or data.head is None or data.normalizer is None:
            raise C2IRError(f"{self.name}.select_logit_weight=true needs the impression images and the model; "
                            "fit it through `c2ir evaluate`/`c2ir run`, or set select_logit_weight=false")
        imp, targets = data.impressions, data.impressions["labels"]
        k = len(self.stats[self.layers[0]].mean)
        fn = LOGIT_SCORES[self.logit_score]
        aucs: dict[float, list[float]] = {w: [] for w in LOGIT_WEIGHT_GRID}
        for f, (a, b) in enumerate((folds(targets), folds(targets)[::-1])):
            fold = C2IR(self.name, ipm=self.ipm, ipm_seed=self.ipm_seed, ipm_projections=self.ipm_projections,
                        normalize=self.normalize, logit_score=self.logit_score, class_weighting=self.class_weighting)
            fold._setup(compute_class_stats({n: v[a] for n, v in imp.items()}, targets[a], self.layers, k), self.weights)
            fit_a = {n: v[a] for n, v in imp.items()}
            loc, spread = impression_scale(fold.layer_deviations(fit_a), self.normalize)
            logit_a = fn(fit_a["logits"])
            sets = {"held_back": {n: v[b] for n, v in imp.items()}}
            for pname, pix in proxy_images(data.impression_images[b], targets[b], seed=f).items():
                sets[pname] = extract_features(data.model, pix, data.normalizer, self.layers, data.head, desc=pname,
                                               device=next(data.model.parameters()).device, with_bn=False)
            raw = {n: fold.layer_deviations(s) for n, s in sets.items()}
            for w in LOGIT_WEIGHT_GRID:
                sc = {n: combine(raw[n], loc, spread, self.weights, fn(s["logits"]), logit_a, w).numpy()
                      for n, s in sets.items()}
                aucs[w] += [100 * auroc(sc["held_back"], sc[p]) for p in sets if p != "held_back"]
        return {w: float(np.mean(v)) for w, v in aucs.items()}

    def _setup(self, stats: ClassStats, weights: torch.Tensor) -> None:
        self.stats = stats
        self.layers = list(stats.layers)
        if len(weights) != len(self.layers):
            raise C2IRError(f"c2ir: {len(weights)} MGI weights for {len(self.layers)} layers; rerun weight-layers")
        self.weights = weights.double()
        fn = get_ipm(self.ipm)
        self.extra = {n: fn.prepare(stats[n], seed=self.ipm_seed, projections=self.ipm_projections)
                      for n in self.layers}

    def layer_deviations(self, feats: FeatureBundle, chunk: int = 1024) -> torch.Tensor:
        """(N, L) raw IPM deviations of each input from its predicted class (or, with
        `class_weighting=posterior`, the softmax-weighted deviation over classes), per layer."""
        fn = IPMS[self.ipm]
        logits = feats["logits"]
        pred = logits.argmax(1)
        classes = len(self.stats[self.layers[0]].mean) if self.class_weighting == "posterior" else 0
        cols = []
        for name in self.layers:
            pooled = feats[f"layer/{name}"].float()
            spatial = feats.get(f"spatial/{name}")
            parts = []
            for s in batches(len(pred), chunk):
                sp = None if spatial is None else spatial[s].float()
                if classes:
                    per_class = torch.stack([fn(pooled[s], sp, self.stats[name], torch.full_like(pred[s], k),
                                                self.extra[name]).double() for k in range(classes)], dim=1)
                    parts.append(posterior_weighted(per_class, logits[s]))
                else:
                    parts.append(fn(pooled[s], sp, self.stats[name], pred[s], self.extra[name]))
            cols.append(torch.cat(parts).double())
        return torch.stack(cols, dim=1)

    def _score(self, feats):
        logit = None if self.logit_imp is None else LOGIT_SCORES[self.logit_score](feats["logits"])
        return combine(self.layer_deviations(feats), self.loc, self.spread, self.weights,
                       logit, self.logit_imp, self.weight_used)

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"stats/{k}": v for k, v in self.stats.to_tensors().items()}
        out.update({"weights": self.weights, "loc": self.loc, "spread": self.spread,
                    "weight_used": torch.tensor([self.weight_used], dtype=torch.float64)})
        out.update({f"layer/{i:03d}/{n}": torch.zeros(0) for i, n in enumerate(self.layers)})  # names, in order
        if self.logit_imp is not None:
            out["logit_imp"] = self.logit_imp
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        layers = [k.split("/", 2)[2] for k in sorted(k for k in tensors if k.startswith("layer/"))]
        stats = ClassStats.from_tensors(layers, {k[len("stats/"):]: v for k, v in tensors.items() if k.startswith("stats/")})
        self._setup(stats, tensors["weights"])
        self.weights = tensors["weights"]
        self.loc, self.spread, self.logit_imp = tensors["loc"], tensors["spread"], tensors.get("logit_imp")
        if "weight_used" in tensors:   # detectors saved before select_logit_weight existed use logit_weight
            self.weight_used = float(tensors["weight_used"][0])
        super().load_state(tensors)
