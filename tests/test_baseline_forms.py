"""Baselines in their papers' forms (issue 23, part 6): Mahalanobis' covariance, ODIN's clamp, ASH's percentile."""

import numpy as np
import pytest
import torch

from c2ir.detectors import FitData, build_detector
from c2ir.detectors.ash import paper_percentile
from c2ir.detectors.mahalanobis import fit_gaussian, min_distance, tied_precision
from c2ir.errors import C2IRError


def _bundle(x, labels):
    x = torch.tensor(x, dtype=torch.float32)
    return {"penultimate": x, "logits": torch.zeros(len(x), 2), "labels": torch.tensor(labels)}


def test_empirical_covariance_is_the_default_and_known():
    # class 0: (+-1, 0), (0, +-1) around (0, 0); class 1 the same around (10, 0): Sigma = diag(1/2, 1/2)
    pts = [[1, 0], [-1, 0], [0, 1], [0, -1]]
    x = pts + [[a + 10, b] for a, b in pts]
    det = build_detector("mahalanobis", {"type": "mahalanobis"})
    assert det.covariance == "empirical"
    det.fit(FitData(id_train=_bundle(x, [0] * 4 + [1] * 4)))
    scores = det.score({"penultimate": torch.tensor([[1.0, 1.0], [10.0, 3.0], [5.0, 0.0]])})
    np.testing.assert_allclose(scores, [4.0, 18.0, 50.0])          # 2*1 + 2*1; 2*9; 2*25 (to either mean)


def test_singular_covariance_uses_the_pseudo_inverse(caplog):
    # every centred sample lies on the x axis: Sigma = diag(1, 0), pinv = diag(1, 0); y deviations count nothing
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    means, prec = fit_gaussian(x, torch.tensor([0, 0]), 1)
    torch.testing.assert_close(prec, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert min_distance(torch.tensor([[2.0, 5.0]]), means, prec).item() == pytest.approx(4.0)
    assert "rank 1 < 2" in caplog.text


def test_ledoit_wolf_is_a_parameter():
    from sklearn.covariance import LedoitWolf

    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(tied_precision(x, "ledoit_wolf").numpy(),
                               LedoitWolf(assume_centered=True).fit(x.numpy()).precision_)
    np.testing.assert_allclose(tied_precision(x).numpy(), np.linalg.inv(x.numpy().T @ x.numpy() / 20), rtol=1e-8)
    with pytest.raises(C2IRError, match="covariance"):
        build_detector("mahalanobis", {"type": "mahalanobis", "covariance": "shrunk"})


def _upward_model():
    """Linear head whose class-0 logit grows with every pixel: ODIN's step raises every pixel."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.zero_()
    return model


def test_odin_clamp_is_a_parameter_default_off():
    model, white = _upward_model(), torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    eps = 0.25

    def score(**p):
        return build_detector("odin", {"type": "odin", "temperature": 1.0, "epsilon": eps, **p}).fit(FitData()) \
            .score_images(model, lambda v: v, white)[0]

    def neg_msp(pixel):   # the two logits are 4*pixel and 0
        return -1.0 / (1.0 + np.exp(-4.0 * pixel))

    assert build_detector("odin", {"type": "odin"}).clamp is False
    assert score() == pytest.approx(neg_msp(1.0 + eps))            # the paper's form: the step leaves [0, 1]
    assert score(clamp=True) == pytest.approx(neg_msp(1.0))        # clamped back to white


def test_ash_percentile_auto_is_the_papers_setting_per_benchmark():
    assert [paper_percentile("s", k) for k in (10, 100, 1000)] == [95.0, 90.0, 90.0]
    assert [paper_percentile("b", k) for k in (10, 100, 1000)] == [95.0, 85.0, 65.0]
    a = torch.arange(1.0, 21.0)[None]                               # 20 units: p=95 keeps 1, p=65 keeps 7
    for classes, kept in ((10, 1), (1000, 7)):
        head = torch.nn.Linear(20, classes)
        det = build_detector("ash_b", {"type": "ash", "variant": "b"}).fit(FitData(head=head))
        assert det.percentile == "auto"
        manual = torch.zeros(1, 20, dtype=torch.float64)
        manual[0, 20 - kept:] = a.sum() / kept                       # the top `kept` units, each sum / kept
        expected = -torch.logsumexp(torch.nn.functional.linear(manual, head.weight.double(), head.bias.double()), 1)
        assert det.score({"penultimate": a})[0] == pytest.approx(expected.item())
    fixed = build_detector("ash_s", {"type": "ash", "percentile": 50}).fit(FitData(head=torch.nn.Linear(20, 10)))
    assert fixed.effective_percentile == 50.0
    with pytest.raises(C2IRError, match="percentile"):
        build_detector("ash_s", {"type": "ash", "percentile": "high"})
