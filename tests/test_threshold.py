"""c2ir.threshold: the one data-free threshold rule of predict() and `c2ir score`, on known answers."""

import numpy as np
import pytest

from c2ir.errors import C2IRError
from c2ir.threshold import (NotComputableError, Threshold, binomial_interval, data_free_threshold, quantile_threshold,
                            shifted_level, shifted_threshold)


def test_wilson_interval_known_values():
    lo, hi = binomial_interval(0.95, 400)           # (p + z^2/2n) / (1 + z^2/n) +- ...
    assert (round(lo, 4), round(hi, 4)) == (0.9240, 0.9674)   # worked by hand: 0.94572 -+ 0.021684
    assert binomial_interval(0.5, 0) == (0.0, 1.0)
    lo, hi = binomial_interval(0.95, 10**6)
    assert hi - lo < 0.001 and lo < 0.95 < hi


def test_quantile_threshold_keeps_the_share_and_says_so():
    t = quantile_threshold(np.arange(101, dtype=float), 0.95, "pseudo_real_cross_fitted")
    assert t.value == 95.0 and t.reference == 101 and t.rule == "pseudo_real_cross_fitted"
    assert "95% of 101 softened impressions held back from the statistics" in t.describe()
    assert "on four model pairs: 86-100% kept per run" in t.describe()   # what the rule kept of real data, not only the premise
    assert Threshold.from_json(t.to_json()) == t
    assert "calibrate" not in quantile_threshold(np.arange(10.0), 0.9, "calibration").describe()
    with pytest.raises(NotComputableError, match=r"impressions \(in-sample\) \(2 of 4 scores are NaN and infinite\)"):
        quantile_threshold(np.array([1.0, np.nan, 2.0, np.inf]), 0.5, "impressions")
    with pytest.raises(C2IRError, match="unknown threshold rule"):
        quantile_threshold(np.arange(3.0), 0.9, "magic")
    with pytest.raises(C2IRError, match="tpr=1.0"):
        quantile_threshold(np.arange(3.0), 1.0, "impressions")
    with pytest.raises(C2IRError, match="no reference scores"):
        quantile_threshold(np.array([]), 0.9, "impressions")


class _Det:
    reference = None


def test_shifted_level_moves_the_quantile_by_a_normal_location_shift():
    assert shifted_level(0.95, 0.0) == pytest.approx(0.95)
    assert shifted_level(0.95, 1.4) == pytest.approx(0.5968, abs=1e-4)   # Phi(1.6449 - 1.4)
    assert shifted_level(0.5, 1.0) == pytest.approx(0.1587, abs=1e-4)    # Phi(-1)
    ref = np.random.default_rng(0).normal(size=200_000)
    real = ref - 1.4   # inputs 1.4 reference standard deviations lower: the shifted quantile keeps 95% of them
    t = shifted_threshold(ref, 0.95, 1.4)
    assert float(np.mean(real <= t.value)) == pytest.approx(0.95, abs=0.002)
    assert t.rule == "pseudo_real_shifted" and t.tpr == 0.95 and t.level == pytest.approx(0.5968, abs=1e-4)
    assert "59.7% of 200000" in t.describe() and "shift, 1.4 of their standard deviations, for a nominal 95%" in t.describe()
    assert Threshold.from_json(t.to_json()) == t
    for bad in ({"level": 1.5}, {"shift": float("nan")}):
        with pytest.raises(ValueError, match="level"):
            Threshold.from_json({**t.to_json(), **bad})
    old = {k: v for k, v in quantile_threshold(ref, 0.95, "pseudo_real_cross_fitted").to_json().items()
           if k not in ("level", "shift")}   # saved before the shifted rule existed
    assert Threshold.from_json(old).level is None
    with pytest.raises(C2IRError, match="tpr"):
        shifted_threshold(ref, 1.0, 1.4)


def test_data_free_threshold_prefers_the_cross_fitted_reference():
    import torch

    pixels = torch.zeros(4, 1, 8, 8)
    seen = []
    score = lambda x: (seen.append(x), np.arange(4.0))[1]  # noqa: E731
    in_sample = lambda: np.arange(8.0)  # noqa: E731
    det = _Det()
    assert data_free_threshold(det, 0.5, score, None, in_sample).rule == "impressions"
    t = data_free_threshold(det, 0.5, score, pixels, in_sample)
    assert t.rule == "pseudo_real" and t.reference == 4 and seen[0].shape == pixels.shape
    det.reference = np.arange(20.0)
    assert data_free_threshold(det, 0.5, score, pixels, in_sample).reference == 20
    det.reference_shift_used = 1.0   # C2IR with its logit term: the shifted quantile of the same reference
    t = data_free_threshold(det, 0.5, score, pixels, in_sample)
    assert t.rule == "pseudo_real_shifted" and t.value == pytest.approx(np.quantile(np.arange(20.0), shifted_level(0.5, 1.0)))
