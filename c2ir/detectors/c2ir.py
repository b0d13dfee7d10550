"""C2IR (Chen et al., "Detecting Out-of-distribution Examples via Class-conditional Impressions
Reappearing", ICASSP 2023, arXiv 2303.09746).

For each selected layer l, the deviation d_l(x) is an IPM between the input's features
and the impression statistics of its predicted class; deviations are brought to a common
scale on the impressions themselves and combined with the MGI layer weights:

    D(x) = sum_l w_l * n_l(d_l(x))
    S(x) = D(x)  [+ logit_weight * n_0(logit score)]                      (combination=sum)
    S(x) = max(z(D(x)), logit_weight * n_0(logit score))                   (combination=max)

Higher S means more likely OOD. `max` ("either part says OOD"; `combine_max`) z-scores D on the
impressions too, so a logit term that is confidently wrong on an input (Energy on noise) cannot pull
down an input whose deviations are extreme, which the weighted sum lets it do. With `logit_score=none` this is the paper's method (the
`c2ir_paper` config); the optional logit term (e.g. Energy, z-scored on the impressions) is this
project's data-free addition: it uses nothing but the model and the impressions.

Data-free choices at fit time (on by default): the IPM (`select_ipm`: the configured one or the
tied-covariance `mahalanobis`), the logit term's weight (`select_logit_weight`, from
`LOGIT_WEIGHT_GRID`) and, with `select_combination`, the combination rule (`COMBINATIONS`). The impressions of each class are split into two folds; on each fold the
detector is fitted on one half, and the other half, softened (`c2ir.proxies.softened`: a mild blur
that removes synthesis residue; the pseudo-real ID side), is separated from three proxy outliers
made from it (`c2ir.proxies`: 4x4 patch-permuted, blurred, two-class mixtures); the candidate with the
best mean AUROC wins (ties go to the configured IPM, then `sum`, then the smaller weight; `criterion_reference=raw`
compares the proxies with the raw held-back half instead of the softened one). Only candidates that keep the
deviations' own view of the blurred proxy compete (`blurred_tolerance`, `within_tolerance`): their AUROC against it
may fall at most that many points below the same IPM's deviations alone. Why: the deviations separate blurred
images almost perfectly (AUROC 99-100 on the CIFAR nets) and Energy barely sees blur, so a weight at which that
separation collapses is one where the logit term has drowned the deviations; the mean over the proxies, biased
towards the logit term (docs/BENCHMARKS.md section 18), would otherwise run to the end of the weight grid
(section 20). No real ID or OOD data is
used. The same cross-fitted scores of the softened held-back impressions are kept (`reference`):
`c2ir.threshold` sets the data-free threshold on them (with a logit term at a quantile moved down by the
measured impressions-vs-real shift, `reference_shift`).
Normalisation `impression_z` maps d_l to (d_l - mean) / std over the impressions' own
deviations; `impression_std` divides by that std; `none` leaves raw deviations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import torch

from c2ir.detectors.base import (CLASS_STATS, IMPRESSION_IMAGES, LAYER_WEIGHTS, POOLED_LAYERS, SPATIAL, Detector,
                                 FitData)
from c2ir.detectors.registry import register_detector
from c2ir.detectors.logits import LOGIT_SCORES
from c2ir.errors import C2IRError
from c2ir.extraction import FeatureBundle, batches, extract_features
from c2ir.ipm import IPMS, get_ipm
from c2ir.metrics import auroc
from c2ir.proxies import folds, proxy_images, softened
from c2ir.stats import ClassStats, compute_class_stats

log = logging.getLogger(__name__)

NORMALIZATIONS = ("impression_z", "impression_std", "none")
CLASS_WEIGHTINGS = ("argmax", "posterior")
COMBINATIONS = ("sum", "max")    # how the deviations and the logit term are combined (module docstring)
CRITERION_REFERENCES = ("softened", "raw")   # the ID side of the proxy criterion (`criterion_reference`)
RAW_REFERENCE = "reference_raw"   # the fold set of the raw held-back impressions
LOGIT_WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)   # candidates of select_logit_weight
SELECTABLE_IPM = "mahalanobis"   # the deviation measure select_ipm may switch to from the configured one
REFERENCE_SHIFT = 1.4   # real ID vs softened held-back impressions, in the reference's std (c2ir.threshold)
GUARD_PROXY = "blurred"          # the proxy whose separation by the deviations a candidate must keep (blurred_tolerance)
MIN_PER_CLASS = 4                # impressions per class the fold split needs (2 per fold)

__all__ = ["C2IR", "CLASS_WEIGHTINGS", "COMBINATIONS", "LOGIT_SCORES", "LOGIT_WEIGHT_GRID", "NORMALIZATIONS",
           "SELECTABLE_IPM", "GUARD_PROXY", "REFERENCE_SHIFT", "combine", "combine_max", "impression_scale", "logit_z", "posterior_weighted", "select_variant",
           "select_weight", "select_within_tolerance", "within_tolerance"]


def select_weight(criteria: dict[float, float]) -> float:
    """The weight with the highest criterion; ties go to the smaller weight (pure)."""
    return max(sorted(criteria), key=lambda w: criteria[w])


def select_variant(criteria: dict[tuple, float], order: Iterable[str]) -> tuple:
    """The (ipm, weight) or (ipm, combination, weight) with the highest criterion; ties go to the IPM listed
    first in `order`, then to the combination listed first in `COMBINATIONS` (`sum`), then to the smaller
    weight (pure)."""
    rank = {name: i for i, name in enumerate(order)}
    combo = {name: i for i, name in enumerate(COMBINATIONS)}
    return max(sorted(criteria, key=lambda v: (rank[v[0]], *(combo[c] for c in v[1:-1]), v[-1])),
               key=lambda v: criteria[v])


def within_tolerance(parts: dict[tuple, dict[str, float]], alone: dict[str, float], tolerance: float | None,
                     proxy: str = GUARD_PROXY) -> list[tuple]:
    """The candidates (ipm, [combination,] weight) whose AUROC against `proxy` (`parts[v][proxy]`) is at most
    `tolerance` points below `alone[ipm]`, the same IPM's deviations alone; every candidate when `tolerance` is
    None (pure)."""
    if tolerance is None:
        return list(parts)
    return [v for v, per in parts.items() if per[proxy] >= alone[v[0]] - tolerance]


def select_within_tolerance(criteria: dict[tuple, float], guard: dict[tuple, float], alone: dict[str, float],
                            tolerance: float | None, order: Iterable[str]) -> tuple[tuple, list[tuple], bool]:
    """(choice, candidates that competed, fell_back): `select_variant` among the candidates `within_tolerance`
    (their `guard` AUROC against GUARD_PROXY); when none is (a weight fixed above 0), among all, with
    fell_back=True (pure)."""
    eligible = within_tolerance({v: {GUARD_PROXY: g} for v, g in guard.items()}, alone, tolerance)
    fell_back = not eligible
    eligible = list(criteria) if fell_back else eligible
    return select_variant({v: criteria[v] for v in eligible}, order), eligible, fell_back


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
        score = score + logit_weight * logit_z(logit, logit_imp)
    return score


def logit_z(logit: torch.Tensor, logit_imp: torch.Tensor) -> torch.Tensor:
    """The logit score z-scored on the impressions' own logit scores (pure)."""
    return (logit - logit_imp.mean()) / logit_imp.std().clamp(min=1e-12)


def combine_max(dev: torch.Tensor, dev_imp: torch.Tensor, logit_z: torch.Tensor | None,
                logit_weight: float) -> torch.Tensor:
    """max((dev - mean) / std of `dev_imp`, logit_weight * logit_z): either part alone can call an input OOD
    (pure; `logit_z` None or weight 0: the z-scored deviations alone, ordered as `dev`)."""
    dev_z = (dev - dev_imp.mean()) / dev_imp.std().clamp(min=1e-12)
    if logit_z is None or logit_weight == 0:
        return dev_z
    return torch.maximum(dev_z, logit_weight * logit_z.to(dev_z.dtype))


def _take(bundle: FeatureBundle, idx: torch.Tensor) -> FeatureBundle:
    return {k: v[idx] for k, v in bundle.items()}


def _name_tensor(name: str) -> torch.Tensor:
    return torch.tensor(list(name.encode()), dtype=torch.uint8)


def _tensor_name(t: torch.Tensor) -> str:
    """The inverse of `_name_tensor`."""
    return bytes(t.tolist()).decode()


@register_detector("c2ir")
class C2IR(Detector):
    """C2IR on cached features: class-conditional IPM deviations, scaled on the impressions, MGI-weighted.

    Args:
        fit_on: `impressions` (the method is data-free by construction).
        ipm: deviation measure, a name of `c2ir.ipm.IPMS` (the CLI passes its `ipm=` group here).
        ipm_seed: seed of the IPM's random constants (bandwidth subsample, projections).
        ipm_projections: random directions of `sliced_wasserstein`.
        normalize: `impression_z`, `impression_std` or `none` (see the module docstring).
        logit_score: optional logit term, `energy`, `msp`, `maxlogit` or `none` (the paper's method).
        logit_weight: weight of the logit term after z-scoring it on the impressions.
        class_weighting: `argmax` (deviation from the predicted class) or `posterior`
            (softmax-weighted deviation over every class).
        select_logit_weight: choose the logit term's weight at fit time from `LOGIT_WEIGHT_GRID`
            (module docstring); `logit_weight` is then unused. Ignored for `logit_score=none`.
        select_ipm: choose at fit time between `ipm` and `SELECTABLE_IPM` (the same criterion).
        combination: `sum` (deviations + weighted logit term) or `max` (either part alone; module docstring).
        select_combination: choose the combination rule at fit time among `COMBINATIONS` (the same criterion;
            `combination` is then unused). Ignored for `logit_score=none`.
            `combination=max` without a logit term is the deviations alone, so it is used as `sum` there.
            The selections (`select_logit_weight`, `select_ipm` on by default, `select_combination` off): only
            for pooled IPMs (a distribution IPM is used as given); they need the impression images and the
            model (the CLI and the API provide both; without them the configured values are used, with a
            warning). docs/BENCHMARKS.md sections 11, 15, 18.
        blurred_tolerance: AUROC points (against the blurred proxy) by which a candidate (any ipm, combination and
            weight the fit chooses among, the IPM choice with a fixed weight included) may fall below its IPM's
            deviations alone and still be chosen; when none is within it (a fixed weight), all compete and
            `fit_summary()["tolerance_fell_back"]` says so (module docstring). 3 points: the tightest tolerance that
            gave the ResNet-20's best test AUROC with both its default and its `synth=deepinversion` impressions
            (docs/BENCHMARKS.md section 20; a choice made on that pair's test results); null: no such limit (the
            rule before section 20).
        reference_shift: how many of the reference's standard deviations real ID inputs are taken to score below the
            softened held-back impressions when the data-free threshold is set (`c2ir.threshold`, rule
            `pseudo_real_shifted`); null: `REFERENCE_SHIFT` (1.4, measured for this detector with its logit term on
            the digits model and the ResNet-20; docs/BENCHMARKS.md section 20) with a logit term, 0 without one
            (`c2ir_paper`, or a fit that chose weight 0: the deviations' shift varies too much between models for one
            value); 0: the plain quantile. It must be >= 0: real images score lower than the softened held-back
            impressions for this score on every pair measured.
        criterion_reference: the ID side of the proxy criterion: `softened` held-back impressions (the threshold's
            reference, the default) or `raw` held-back impressions, which differ from the proxies by what the
            proxies change and not by the blur as well (docs/BENCHMARKS.md section 18: it removes that bias but
            selects worse). The threshold always uses the softened ones.
    """

    limits = {"ipm_projections": ">= 1", "ipm_seed": ">= 0", "blurred_tolerance": ">= 0", "reference_shift": ">= 0"}
    requires_fit = True

    def __init__(self, name: str = "c2ir", *, fit_on: str = "impressions", ipm: str = "mean_standardized",
                 ipm_seed: int = 0, ipm_projections: int = 64, normalize: str = "impression_z",
                 logit_score: str = "energy", logit_weight: float = 1.0, class_weighting: str = "argmax",
                 select_logit_weight: bool = True, select_ipm: bool = True, combination: str = "sum",
                 select_combination: bool = False, criterion_reference: str = "softened",
                 blurred_tolerance: float | None = 3.0, reference_shift: float | None = None) -> None:
        super().__init__(name, fit_on=fit_on)
        get_ipm(str(ipm))  # fail at construction, not at fit
        if normalize not in NORMALIZATIONS:
            raise C2IRError(f"{name}.normalize={normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if logit_score not in ("none", *LOGIT_SCORES):
            raise C2IRError(f"{name}.logit_score={logit_score!r}; choose none, {', '.join(LOGIT_SCORES)}")
        if class_weighting not in CLASS_WEIGHTINGS:
            raise C2IRError(f"{name}.class_weighting={class_weighting!r}; choose one of {', '.join(CLASS_WEIGHTINGS)}")
        if combination not in COMBINATIONS:
            raise C2IRError(f"{name}.combination={combination!r}; choose one of {', '.join(COMBINATIONS)}")
        if criterion_reference not in CRITERION_REFERENCES:
            raise C2IRError(f"{name}.criterion_reference={criterion_reference!r}; choose one of "
                            f"{', '.join(CRITERION_REFERENCES)}")
        self.criterion_reference = str(criterion_reference)
        self.blurred_tolerance = None if blurred_tolerance is None else float(blurred_tolerance)
        self.reference_shift = None if reference_shift is None else float(reference_shift)
        self.class_weighting = str(class_weighting)
        pooled = not IPMS[str(ipm)].needs_spatial
        # the selections need a pooled IPM (and a logit term, for its weight); elsewhere the values are used as given
        self.select_logit_weight = bool(select_logit_weight) and logit_score != "none" and pooled
        self.select_ipm = bool(select_ipm) and pooled
        self.select_combination = bool(select_combination) and logit_score != "none" and pooled
        self.combination = str(combination)
        self.ipm, self.ipm_seed, self.ipm_projections = str(ipm), int(ipm_seed), int(ipm_projections)
        self.normalize, self.logit_score, self.logit_weight = str(normalize), str(logit_score), float(logit_weight)
        self.ipm_used, self.weight_used, self.combination_used = self.ipm, *self._configured_rule()
        self.selection: dict[tuple[str, str, float], float] = {}
        self.guard_auroc: dict[tuple[str, str, float], float] = {}   # each candidate's AUROC against GUARD_PROXY
        self.eligible: list[tuple[str, str, float]] = []            # the candidates that competed
        self.fell_back = False   # no candidate was within blurred_tolerance, so all competed
        self.dev_imp: torch.Tensor | None = None   # the impressions' D(x), the scale of `max`
        self.reference: np.ndarray | None = None   # cross-fitted scores of softened held-back impressions

    @property
    def needs(self) -> frozenset[str]:
        # the impression images: for the selections and the threshold's pseudo-real reference
        base = {POOLED_LAYERS, CLASS_STATS, LAYER_WEIGHTS, IMPRESSION_IMAGES}
        return frozenset(base | {SPATIAL}) if IPMS[self.ipm].needs_spatial else frozenset(base)

    @property
    def may_need(self) -> frozenset[str]:
        """Spatial features too: an `ipm=` sweep may choose a distribution IPM."""
        return self.needs | {SPATIAL}

    @property
    def reference_shift_used(self) -> float:
        """The threshold's impressions-vs-real shift (`reference_shift`; null: REFERENCE_SHIFT when the score has a
        logit term, 0 when it is the deviations alone: no logit term, or a weight of 0 chosen or configured, which
        scores as `c2ir_paper` does, whose shift is not one value)."""
        if self.reference_shift is not None:
            return self.reference_shift
        return 0.0 if self.logit_score == "none" or self.weight_used == 0 else REFERENCE_SHIFT

    def _configured_rule(self) -> tuple[float, str]:
        """(weight, combination) when nothing is chosen: without a logit term there is nothing to weigh or to take
        the max with, so weight 0 and `sum` (the reference and the scores then agree)."""
        return (0.0, "sum") if self.logit_score == "none" else (self.logit_weight, self.combination)

    @property
    def selecting(self) -> bool:
        return self.select_logit_weight or self.select_ipm or self.select_combination

    def candidates(self) -> tuple[list[str], list[float]]:
        """The IPMs and logit weights the fit chooses among (the configured ones when not selecting)."""
        ipms = [self.ipm] + ([SELECTABLE_IPM] if self.select_ipm and self.ipm != SELECTABLE_IPM else [])
        if self.logit_score == "none":
            return ipms, [0.0]
        return ipms, list(LOGIT_WEIGHT_GRID) if self.select_logit_weight else [self.logit_weight]

    def variants(self) -> list[tuple[str, str, float]]:
        """Every (ipm, combination, weight) the fit chooses among. `max` with weight 0 is the deviations alone,
        ordered as `sum` with weight 0, so it is not a candidate of its own."""
        ipms, ws = self.candidates()
        combos = list(COMBINATIONS) if self.select_combination else [self._configured_rule()[1]]
        return [(i, c, w) for i in ipms for c in combos for w in ws if not (c == "max" and w == 0 and len(combos) > 1)]

    # ----- fit -------------------------------------------------------------------------------
    def _fit(self, data: FitData) -> None:
        if data.class_stats is None or data.impressions is None:
            raise C2IRError("c2ir needs impression statistics: run collect-stats (or `c2ir run`) first")
        weights = data.layer_weights if data.layer_weights is not None else torch.ones(len(data.class_stats.layers))
        self.ipm_used, self.weight_used, self.combination_used = self.ipm, *self._configured_rule()
        self.selection, self.reference, self.guard_auroc, self.eligible, self.fell_back = {}, None, {}, [], False
        folds_ = self._fold_sets(data)
        if folds_ is not None:
            ipms, _ = self.candidates()
            scored = {ipm: self._fold_scores(folds_, ipm, weights) for ipm in ipms}
            if self.selecting:
                self._select(scored, ipms)
            self.reference = self._reference(scored[self.ipm_used], self.combination_used, self.weight_used)
        self._setup(data.class_stats, weights, self.ipm_used)
        raw_imp = self.layer_deviations(data.impressions)
        self.loc, self.spread = impression_scale(raw_imp, self.normalize)
        self.dev_imp = combine(raw_imp, self.loc, self.spread, self.weights)
        self.logit_imp = (None if self.logit_score == "none"
                          else LOGIT_SCORES[self.logit_score](data.impressions["logits"]))

    def _select(self, scored: dict[str, list[dict]], ipms: list[str]) -> None:
        """Choose (ipm, combination, weight): the best mean criterion among the candidates `within_tolerance`."""
        parts = {v: self._proxy_aurocs(scored[v[0]], v[1], v[2], self._criterion_set) for v in self.variants()}
        self.selection = {v: float(np.mean(list(p.values()))) for v, p in parts.items()}
        self.guard_auroc = {v: p[GUARD_PROXY] for v, p in parts.items()}
        alone = {i: (parts[i, "sum", 0.0] if (i, "sum", 0.0) in parts   # weight 0 is usually a candidate already
                     else self._proxy_aurocs(scored[i], "sum", 0.0, self._criterion_set))[GUARD_PROXY] for i in ipms}
        (self.ipm_used, self.combination_used, self.weight_used), self.eligible, self.fell_back = \
            select_within_tolerance(self.selection, self.guard_auroc, alone, self.blurred_tolerance, ipms)
        if self.fell_back:   # only when the weight is fixed above 0: no candidate keeps the deviations' view
            log.warning("%s: no candidate keeps its AUROC against the blurred proxy within %g points of its IPM's "
                        "deviations alone (blurred_tolerance); chose among all of them", self.name,
                        self.blurred_tolerance)
        won = (self.ipm_used, self.combination_used, self.weight_used)
        # one short line; every candidate's figures at DEBUG (and in results.json `c2ir_fit`, report.html)
        log.info("%s: ipm=%s, %s, %s weight x%g chosen on proxy outliers (criterion %.1f, blurred-proxy AUROC %.1f; "
                 "%d of %d candidates within blurred_tolerance; all in results.json c2ir_fit)", self.name, *won[:2],
                 self.logit_score, self.weight_used, self.selection[won], self.guard_auroc[won], len(self.eligible),
                 len(self.selection))
        log.debug("%s: criterion, blurred-proxy AUROC per candidate (- = beyond blurred_tolerance): %s", self.name,
                  ", ".join(f"{i}/{c}/x{w:g}: {v:.1f}, {self.guard_auroc[i, c, w]:.1f}"
                            f"{'' if (i, c, w) in self.eligible else ' -'}" for (i, c, w), v in self.selection.items()))

    def _fold_sets(self, data: FitData) -> list[dict] | None:
        """Per fold: the fit half's statistics and features, the held-back half softened (pseudo-real ID) and, when
        selecting, the proxy outliers made from the held-back half (and, with `criterion_reference=raw`, the held-back
        half itself); None (with a warning) when it cannot be made."""
        missing = data.impression_images is None or data.model is None or data.head is None or data.normalizer is None
        targets = data.impressions["labels"].long()  # type: ignore[index]
        counts = torch.bincount(targets)
        what = "the choice of ipm / logit weight / combination and the threshold's pseudo-real reference"
        if missing:
            log.log(logging.WARNING if self.selecting else logging.INFO,
                    "%s: %s need the impression images and the model (fit through `c2ir evaluate`/`c2ir run` or "
                    "c2ir.C2IR); using ipm=%s, logit_weight=%g, combination=%s and a threshold without held-back "
                    "impressions", self.name, what, self.ipm, self.weight_used, self.combination_used)
            return None
        if int(counts[counts > 0].min()) < MIN_PER_CLASS:
            log.warning("%s: %s need at least %d impressions per class (got %d); using ipm=%s, logit_weight=%g, "
                        "combination=%s and a threshold without held-back impressions", self.name, what, MIN_PER_CLASS,
                        int(counts[counts > 0].min()), self.ipm, self.weight_used, self.combination_used)
            return None
        imp, k = data.impressions, len(data.class_stats.per_layer[data.class_stats.layers[0]].mean)  # type: ignore[union-attr]
        layers = list(data.class_stats.layers)  # type: ignore[union-attr]
        device = next(data.model.parameters()).device  # type: ignore[union-attr]
        # a distribution IPM compares spatial vectors: the folds sample them as collect-stats did
        samples = data.class_stats[layers[0]].samples  # type: ignore[index]
        spatial = imp.get(f"spatial/{layers[0]}")
        max_spatial = 0 if samples is None else int(samples.shape[1])
        grid = 0 if spatial is None or not IPMS[self.ipm].needs_spatial else math.isqrt(int(spatial.shape[1]))

        def features(pixels: torch.Tensor, desc: str) -> FeatureBundle:
            return extract_features(data.model, pixels, data.normalizer, layers, data.head, desc=desc,  # type: ignore[arg-type]
                                    device=device, spatial_grid=grid, with_bn=False)

        out = []
        split = folds(targets)
        for f, (a, b) in enumerate((split, split[::-1])):
            fit_a = _take(imp, a)
            sets = {"reference": features(softened(data.impression_images[b]), "pseudo-real")}  # type: ignore[index]
            if self.selecting and self.criterion_reference == "raw":   # the impressions' own features: no new pass
                sets[RAW_REFERENCE] = _take(imp, b)
            if self.selecting:
                for pname, pix in proxy_images(data.impression_images[b], targets[b], seed=f).items():  # type: ignore[index]
                    sets[pname] = features(pix, pname)
            out.append({"stats": compute_class_stats(fit_a, targets[a], layers, k, max_spatial), "fit": fit_a, "sets": sets})
        return out

    def _fold_scores(self, folds_: list[dict], ipm: str, weights: torch.Tensor) -> list[dict]:
        """Per fold, for one IPM: the normalised, MGI-weighted deviation sum and the logit z-score of every set."""
        fn = LOGIT_SCORES.get(self.logit_score)
        out = []
        for fold in folds_:
            variant = C2IR(self.name, ipm=ipm, ipm_seed=self.ipm_seed, ipm_projections=self.ipm_projections,
                           normalize=self.normalize, logit_score=self.logit_score, class_weighting=self.class_weighting)
            variant._setup(fold["stats"], weights, ipm)
            raw_fit = variant.layer_deviations(fold["fit"])   # once: it is K passes with class_weighting=posterior
            loc, spread = impression_scale(raw_fit, self.normalize)
            logit_fit = None if fn is None else fn(fold["fit"]["logits"])
            rec = {"dev_imp": combine(raw_fit, loc, spread, variant.weights)}
            for name, s in fold["sets"].items():
                feat = combine(variant.layer_deviations(s), loc, spread, variant.weights)
                logit = torch.zeros_like(feat) if fn is None else logit_z(fn(s["logits"]), logit_fit)
                rec[name] = (feat, logit)
            out.append(rec)
        return out

    @staticmethod
    def _combined(rec: dict, name: str, combination: str, weight: float) -> torch.Tensor:
        feat, logit = rec[name]
        return feat + weight * logit if combination == "sum" else combine_max(feat, rec["dev_imp"], logit, weight)

    @property
    def _criterion_set(self) -> str:
        return RAW_REFERENCE if self.criterion_reference == "raw" else "reference"

    @staticmethod
    def _proxy_aurocs(fold_scores: list[dict], combination: str, weight: float,
                      reference: str = "reference") -> dict[str, float]:
        """AUROC (%) of the `reference` set vs each proxy set, mean over both folds (the criterion's parts)."""
        aucs: dict[str, list[float]] = {}
        for rec in fold_scores:
            score = {n: C2IR._combined(rec, n, combination, weight).numpy() for n in rec if n != "dev_imp"}
            for p in score:
                if p not in ("reference", RAW_REFERENCE):
                    aucs.setdefault(p, []).append(100 * auroc(score[reference], score[p]))
        return {p: float(np.mean(v)) for p, v in aucs.items()}

    @staticmethod
    def _criterion(fold_scores: list[dict], combination: str, weight: float, reference: str = "reference") -> float:
        """Mean AUROC (%) of the held-back impressions (softened, or raw) vs each proxy set, over both folds."""
        return float(np.mean(list(C2IR._proxy_aurocs(fold_scores, combination, weight, reference).values())))

    @staticmethod
    def _reference(fold_scores: list[dict], combination: str, weight: float) -> np.ndarray:
        return np.concatenate([C2IR._combined(rec, "reference", combination, weight).numpy()
                               for rec in fold_scores]).astype(np.float64)

    def proxy_criteria(self, data: FitData, per_proxy: bool = False) -> dict:
        """Criterion per candidate (ipm, combination, weight) (module docstring); what `fit` chooses from. With
        `per_proxy`, each candidate's AUROC against each proxy set instead of their mean."""
        folds_ = self._fold_sets(data)
        if folds_ is None:
            raise C2IRError(f"{self.name}: the proxy criterion needs the impression images, the model and at least "
                            f"{MIN_PER_CLASS} impressions per class")
        weights = data.layer_weights if data.layer_weights is not None else torch.ones(len(data.class_stats.layers))  # type: ignore[union-attr]
        ipms, _ = self.candidates()
        scored = {ipm: self._fold_scores(folds_, ipm, weights) for ipm in ipms}
        part = self._proxy_aurocs if per_proxy else self._criterion
        return {v: part(scored[v[0]], v[1], v[2], self._criterion_set) for v in self.variants()}

    def fit_summary(self) -> dict:
        """What the fit chose and on what evidence (results.json `c2ir_fit`, report.html)."""
        return {"ipm": self.ipm_used, "logit_score": self.logit_score,
                "logit_weight": self.weight_used if self.logit_score != "none" else 0.0,
                "combination": self.combination_used, "selected": bool(self.selection),
                "criterion_reference": self.criterion_reference, "blurred_tolerance": self.blurred_tolerance,
                "tolerance_fell_back": self.fell_back,
                "criterion": [{"ipm": i, "combination": k, "logit_weight": w, "criterion": c,
                               "blurred_auroc": self.guard_auroc.get((i, k, w)), "eligible": (i, k, w) in self.eligible}
                              for (i, k, w), c in self.selection.items()],
                "reference": None if self.reference is None else len(self.reference)}

    def _setup(self, stats: ClassStats, weights: torch.Tensor, ipm: str | None = None) -> None:
        self.stats = stats
        self.layers = list(stats.layers)
        if len(weights) != len(self.layers):
            raise C2IRError(f"c2ir: {len(weights)} MGI weights for {len(self.layers)} layers; rerun weight-layers")
        self.weights = weights.double()
        self.ipm_used = ipm or self.ipm_used
        fn = get_ipm(self.ipm_used)
        self.extra = {n: fn.prepare(stats[n], seed=self.ipm_seed, projections=self.ipm_projections)
                      for n in self.layers}

    def layer_deviations(self, feats: FeatureBundle, chunk: int = 1024) -> torch.Tensor:
        """(N, L) raw IPM deviations of each input from its predicted class (or, with
        `class_weighting=posterior`, the softmax-weighted deviation over classes), per layer."""
        fn = IPMS[self.ipm_used]
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

    def layer_scores(self, feats: FeatureBundle) -> torch.Tensor:
        return self.layer_deviations(feats)

    def _score(self, feats):
        logit = None if self.logit_imp is None else LOGIT_SCORES[self.logit_score](feats["logits"])
        if self.combination_used == "max":
            if self.dev_imp is None:
                raise C2IRError(f"{self.name}: a `max` detector without the impressions' deviations (dev_imp); refit it")
            z = None if logit is None else logit_z(logit, self.logit_imp)
            return combine_max(combine(self.layer_deviations(feats), self.loc, self.spread, self.weights),
                               self.dev_imp, z, self.weight_used)
        return combine(self.layer_deviations(feats), self.loc, self.spread, self.weights,
                       logit, self.logit_imp, self.weight_used)

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"stats/{k}": v for k, v in self.stats.to_tensors().items()}
        out.update({"weights": self.weights, "loc": self.loc, "spread": self.spread,
                    "weight_used": torch.tensor([self.weight_used], dtype=torch.float64),
                    "ipm_used": _name_tensor(self.ipm_used), "combination_used": _name_tensor(self.combination_used)})
        out.update({f"layer/{i:03d}/{n}": torch.zeros(0) for i, n in enumerate(self.layers)})  # names, in order
        if self.logit_imp is not None:
            out["logit_imp"] = self.logit_imp
        if self.reference is not None:
            out["reference"] = torch.from_numpy(self.reference)
        if self.combination_used == "max" and self.dev_imp is not None:
            out["dev_imp"] = self.dev_imp   # the scale of `max`
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        layers = [k.split("/", 2)[2] for k in sorted(k for k in tensors if k.startswith("layer/"))]
        stats = ClassStats.from_tensors(layers, {k[len("stats/"):]: v for k, v in tensors.items() if k.startswith("stats/")})
        ipm = _tensor_name(tensors["ipm_used"]) if "ipm_used" in tensors else self.ipm
        self._setup(stats, tensors["weights"], ipm)
        self.weights = tensors["weights"]
        self.loc, self.spread, self.logit_imp = tensors["loc"], tensors["spread"], tensors.get("logit_imp")
        if "weight_used" in tensors:   # detectors saved before select_logit_weight existed use logit_weight
            self.weight_used = float(tensors["weight_used"][0])
        self.reference = tensors["reference"].numpy() if "reference" in tensors else None
        self.dev_imp = tensors.get("dev_imp")
        # saved before `combination_used` was stored: `dev_imp` was saved only for `max`
        self.combination_used = (_tensor_name(tensors["combination_used"]) if "combination_used" in tensors
                                 else "max" if self.dev_imp is not None else "sum")
        super().load_state(tensors)
