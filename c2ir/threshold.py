"""Decision thresholds: the one rule behind `predict()` and `c2ir score` (issue 21).

A detector says "OOD" above its threshold. Without ID data the threshold is the score that a
share of a *reference* set stays below: `tpr`, or for `pseudo_real_shifted` the share at which a real `tpr` is
estimated to sit. Which reference, by rule:

- `pseudo_real_cross_fitted` (`c2ir_paper`, a C2IR with `reference_shift=0` or whose score is the deviations alone):
  impressions held back from the statistics they are
  scored against (the fit's two folds) and softened (`c2ir.proxies.softened`: the synthesis residue
  blurred away), scored by the chosen variant. Real images sit further from the class statistics
  than the impressions those statistics were fitted on; the in-sample rule below kept 74% of real
  CIFAR-10 at a nominal 95% (docs/BENCHMARKS.md sections 10, 17).
- `pseudo_real_shifted` (C2IR with its logit term, the default `c2ir`): the same reference, its quantile moved down
  by a location model of the impressions-vs-real shift (`shifted_level`): real ID images score about
  `C2IR.reference_shift_used` (1.4) standard deviations of the reference lower than the softened held-back
  impressions, so a real `tpr` sits at the reference's Phi(Phi^-1(tpr) - 1.4) quantile (0.597 at 95%). The 1.4 was
  read off real ID test images of the digits model and the CIFAR-10 ResNet-20 (the only pairs allowed to choose;
  docs/BENCHMARKS.md section 20); the ResNet-32's and -44's ranges, printed by the same runs, contain it too, and on
  other impressions (`synth=deepinversion`) 3 of 12 runs fell outside 92-98%.
- `pseudo_real`: the softened impressions scored by the detector fitted on all impressions (also C2IR's, unshifted,
  when it had fewer than 4 impressions per class to split into folds; every
  other detector: those that do not fit on impressions are scored out of sample anyway).
- `impressions`: the impressions themselves (in-sample; the rule before issue 21, and the fallback
  when the impression images are not available).
- `calibration`: real ID data given to `calibrate(id_loader)`: the exact rule whenever such data exists.
- `fit_data`: the ID training data a full-access detector was fitted on (in-sample).

The expected range is the 95% binomial interval of the share of inputs kept, *if* inputs score
like the reference (exact for calibration data; for `pseudo_real_shifted`, if the shift holds). For the
data-free rules that premise is an approximation: at synth=default, on the four benchmark pairs (3 seeds each),
the shifted rule kept 92.2-97.8% of real ID test images for c2ir per run at a nominal 95% (section 20; 91.0-97.6 on
a second machine's cache, section 22), and the plain cross-fitted rule 86-100% for c2ir_paper, whose own shift varies
between models in size and direction (no candidate reference tried holds on every pair: docs/BENCHMARKS.md section
22); the printed line says what was measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from c2ir.errors import C2IRError
from c2ir.inputs import nonfinite_problem

RULES = {
    "pseudo_real_cross_fitted": "softened impressions held back from the statistics (cross-fitted on two folds)",
    "pseudo_real_shifted": "softened impressions held back from the statistics (cross-fitted on two folds)",
    "pseudo_real": "softened impressions",
    "impressions": "impressions (in-sample)",
    "calibration": "calibration data",
    "fit_data": "the fit data (in-sample)",
}
DATA_FREE = ("pseudo_real_shifted", "pseudo_real_cross_fitted", "pseudo_real", "impressions")
# What the rules kept of real ID test images at a nominal 95%, measured at synth=default (digits and CIFAR-10
# ResNet-20/-32/-44, 3 seeds each, on two machines' caches: 24 runs; docs/BENCHMARKS.md sections 20 and 22), per run.
MEASURED = {"pseudo_real_cross_fitted": "; measured at a nominal 95% on four model pairs: 86-100% kept per run for "
                                        "c2ir_paper (mostly lenient)",
            "pseudo_real_shifted": "; measured at a nominal 95% with the default shift on four model pairs: 91-98% "
                                   "kept per run for c2ir at synth=default (23 of 24 runs in 92-98%)"}

__all__ = ["DATA_FREE", "RULES", "NotComputableError", "Threshold", "binomial_interval", "data_free_threshold", "quantile_threshold",
           "shifted_level", "shifted_threshold"]


class NotComputableError(C2IRError):
    """The detector's scores on a threshold's reference set hold NaN or infinite values (the message names
    the set and how many); callers prefix the detector and the fix."""


@dataclass(frozen=True)
class Threshold:
    """A threshold, the rule that set it and what it promises."""

    value: float
    rule: str
    tpr: float
    reference: int                       # size of the reference set
    expected: tuple[float, float]        # 95% interval of the share kept by inputs that score like the reference
                                         # (pseudo_real_shifted: by inputs `shift` lower, the model's premise)
    level: float | None = None           # the reference quantile taken when it is not `tpr` (pseudo_real_shifted)
    shift: float = 0.0                   # the shift of pseudo_real_shifted, in standard deviations of the reference

    def describe(self) -> str:
        lo, hi = self.expected
        share = self.tpr if self.level is None else self.level
        text = (f"threshold {self.value:.4g} set by rule {self.rule}: {100 * share:.{0 if self.level is None else 1}f}% "
                f"of {self.reference} {RULES[self.rule]} below it")
        if self.rule == "pseudo_real_shifted":
            text += (f" (their quantile moved down by the impressions-vs-real shift, {self.shift:g} of their standard "
                     f"deviations, for a nominal {100 * self.tpr:.0f}%)")
        text += f"; expected ID TPR {100 * lo:.0f}-{100 * hi:.0f}%"
        if self.rule == "pseudo_real_shifted":
            text += " if real ID inputs score that much lower than them"
        elif self.rule in DATA_FREE:
            text += " if real ID inputs score like them"
        if self.rule in DATA_FREE:
            text += MEASURED.get(self.rule, "") + \
                    " (docs/BENCHMARKS.md section 20; calibrate(id_loader) is exact)"
        return text

    def to_json(self) -> dict:
        return {**asdict(self), "expected": list(self.expected)}

    @classmethod
    def from_json(cls, d: dict) -> "Threshold":
        if d["rule"] not in RULES:
            raise ValueError(f"unknown threshold rule {d['rule']!r}")
        level, shift = d.get("level"), float(d.get("shift", 0.0))
        if (level is not None and not 0.0 < float(level) < 1.0) or not math.isfinite(shift):
            raise ValueError(f"threshold level {level!r} / shift {shift!r}: a level in (0, 1) and a finite shift")
        return cls(float(d["value"]), str(d["rule"]), float(d["tpr"]), int(d["reference"]),
                   (float(d["expected"][0]), float(d["expected"][1])),
                   None if d.get("level") is None else float(d["level"]), float(d.get("shift", 0.0)))


def binomial_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed on n trials (pure)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def quantile_threshold(scores: np.ndarray, tpr: float, rule: str, shift: float = 0.0) -> Threshold:
    """The score that a share `tpr` of `scores` (the rule's reference set) stays below, or with `shift` > 0 the
    `shifted_level(tpr, shift)` share (pure)."""
    if rule not in RULES:
        raise C2IRError(f"unknown threshold rule {rule!r}; choose one of {', '.join(RULES)}")
    if not 0.0 < float(tpr) < 1.0:
        raise C2IRError(f"tpr={tpr}; choose a share of ID inputs to keep, strictly between 0 and 1 (e.g. 0.95)")
    s = np.asarray(scores, dtype=np.float64).ravel()
    problem = nonfinite_problem(s)
    if problem:   # a threshold over NaN/inf scores would call every input ID (or none)
        raise NotComputableError(f"the {RULES[rule]} ({problem})")
    if not len(s):
        raise C2IRError(f"no reference scores for the threshold (rule {rule}); refit the detector")
    level = shifted_level(tpr, shift) if shift else None
    return Threshold(float(np.quantile(s, tpr if level is None else level)), rule, float(tpr), int(len(s)),
                     binomial_interval(float(tpr), len(s)), level, float(shift))


def shifted_level(tpr: float, shift: float) -> float:
    """The quantile of a reference at which a share `tpr` of inputs scoring `shift` standard deviations lower stays
    below, under a normal location model: Phi(Phi^-1(tpr) - shift) (pure; shift 0: `tpr`)."""
    normal = NormalDist()
    return float(normal.cdf(normal.inv_cdf(float(tpr)) - float(shift)))


def shifted_threshold(scores: np.ndarray, tpr: float, shift: float) -> Threshold:
    """`pseudo_real_shifted`: the reference's `shifted_level(tpr, shift)` quantile; expected as `tpr` on as many
    inputs (if the shift holds)."""
    return quantile_threshold(scores, tpr, "pseudo_real_shifted", shift)


def data_free_threshold(detector, tpr: float, score_pixels, images, in_sample) -> Threshold:
    """The data-free threshold of a fitted detector, by the best rule its fit allows (module docstring).

    `score_pixels(pixels)` scores [0, 1] images with the detector (the caller's feature pass);
    `images` are the impressions' pixels (None when unavailable); `in_sample()` scores the impressions.
    """
    from c2ir.proxies import softened

    reference = getattr(detector, "reference", None)
    if reference is not None:
        shift = float(getattr(detector, "reference_shift_used", 0.0))   # >= 0 (C2IR's limits)
        if shift > 0:
            return shifted_threshold(reference, tpr, shift)
        return quantile_threshold(reference, tpr, "pseudo_real_cross_fitted")
    if images is not None:
        return quantile_threshold(score_pixels(softened(images)), tpr, "pseudo_real")
    return quantile_threshold(in_sample(), tpr, "impressions")
