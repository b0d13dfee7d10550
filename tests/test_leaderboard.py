"""The OpenOOD leaderboard's strongest post-hoc methods (issue 23, part 4): NAC, fDBD, NCI, WeiPer+KLD
and their impression-fitted twins, each on tiny hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from c2ir.detectors import FitData, build_detector, detector_config
from c2ir.detectors.nac import balanced_subset, coverage, interval_edges, kl_gradient, nac_score
from c2ir.detectors.weiper import mean_msp, perturbed_head, row_histograms, smooth, symmetric_kl
from c2ir.errors import C2IRError

TWINS = ("nac", "fdbd", "nci", "weiper", "vim")


def _head(weight, bias=None):
    weight = torch.tensor(weight, dtype=torch.float32)
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(torch.zeros(len(weight)) if bias is None else torch.tensor(bias))
    return head


def _fit(name, head, fit_rows, **params):
    fit = {"penultimate": torch.tensor(fit_rows, dtype=torch.float32), "logits": torch.zeros(len(fit_rows), 2),
           "labels": torch.zeros(len(fit_rows), dtype=torch.long)}
    det = build_detector(name, {**detector_config(name), **params})
    return det.fit(FitData(head=head, impressions=fit, id_train=fit))


def _score(det, rows):
    return det.score({"penultimate": torch.tensor(rows, dtype=torch.float32)})


def test_twins_are_full_access_and_data_free():
    for name in TWINS:
        assert build_detector(name, detector_config(name)).data_access == "full access", name
        assert build_detector(f"{name}_imp", detector_config(f"{name}_imp")).data_access == "data-free", name


# ----- fDBD -------------------------------------------------------------------------------------
def test_fdbd_two_classes_is_the_distance_to_the_boundary_over_the_deviation():
    # boundary between w = (1, 0) and (-1, 0) is the y axis: z = (3, 4) lies 3 from it and 5 from mu = 0
    det = _fit("fdbd", _head([[1, 0], [-1, 0]]), [[1, 0], [-1, 0]])
    assert _score(det, [[3, 4]])[0] == pytest.approx(-3 / 5)
    norm = _fit("fdbd", _head([[1, 0], [-1, 0]]), [[5, 5]], regularizer="norm")
    assert _score(norm, [[3, 4]])[0] == pytest.approx(-3 / 5)    # ||z|| = 5 as well; the mean (5, 5) is unused


def test_fdbd_three_classes_averages_over_the_other_classes():
    # logits (2, 1, 0) -> c = 0; to class 1: |2 - 1| / ||(1, -1)||; to class 2: |2 - 0| / ||(1, 0)||; mu = (2, 0)
    det = _fit("fdbd_imp", _head([[1, 0], [0, 1], [0, 0]]), [[1, 0], [3, 0]])
    assert _score(det, [[2, 1]])[0] == pytest.approx(-(1 / math.sqrt(2) + 2) / 2 / 1.0)
    with pytest.raises(C2IRError, match="regularizer"):
        build_detector("fdbd", {"type": "fdbd", "regularizer": "median"})


# ----- NCI --------------------------------------------------------------------------------------
def test_nci_known_value():
    # logits (3, 8) -> c = 1, w_c = (0, 2); (z - mu) = (3, 4): 2 * 4 / 5 = 1.6; alpha ||z||_1 = 0.1 * 7
    det = _fit("nci", _head([[1, 0], [0, 2]]), [[1, 1], [-1, -1]], alpha=0.1)
    assert _score(det, [[3, 4]])[0] == pytest.approx(-(1.6 + 0.7))
    imp = _fit("nci_imp", _head([[1, 0], [0, 2]]), [[3, 0], [3, 0]], alpha=0.0)   # mu = (3, 0): (0, 4) / 4
    assert _score(imp, [[3, 4]])[0] == pytest.approx(-2.0)


# ----- NAC --------------------------------------------------------------------------------------
def test_nac_kl_gradient_closed_form_equals_autograd():
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 4).double()
    z = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    kl = (-(torch.log_softmax(head(z), dim=1)) / 4 - math.log(4)).sum()   # sum of KL(u || p) over rows
    (grad,) = torch.autograd.grad(kl, z)
    torch.testing.assert_close(kl_gradient(z.detach(), head.weight.detach(), head.bias.detach()), grad)


def test_nac_interval_edges():
    e = interval_edges(6, "log")                        # 3 points log_1000 of (1, 16.31, 31.62): 0, 0.4041, 0.5
    np.testing.assert_allclose(e.numpy(), [0, math.log(1 + (math.sqrt(1000) - 1) / 2, 1000), 0.5,
                                           1 - math.log(1 + (math.sqrt(1000) - 1) / 2, 1000), 1], rtol=1e-12)
    e50 = interval_edges(50, "log")
    assert len(e50) == 49 and e50[0] == 0 and e50[-1] == 1
    torch.testing.assert_close(e50 + e50.flip(0), torch.ones(49, dtype=torch.float64))
    np.testing.assert_allclose(interval_edges(5, "uniform").numpy(), [0, 0.25, 0.5, 0.75, 1])


def test_nac_coverage_and_score_known_values():
    edges = interval_edges(5, "uniform")                # intervals [0, .25) [.25, .5) [.5, .75) [.75, 1]
    cover = coverage(torch.tensor([[0.1], [0.1], [0.05], [0.3], [0.9]], dtype=torch.float64), edges, o_star=2)
    np.testing.assert_allclose(cover[:, 0].numpy(), [1.0, 0.5, 0.0, 0.5])   # 3 / 2 capped at 1
    s = nac_score(torch.tensor([[0.2], [0.6], [1.0]], dtype=torch.float64), cover, edges)
    np.testing.assert_allclose(s.numpy(), [-1.0, 0.0, -0.5])   # 1.0 falls in the last interval, closed at 1


def test_nac_o_star_is_scaled_to_the_fit_set():
    # alpha = 0: every state is sigmoid(0) = 1/2, so each neuron's 10 fit states share one interval
    head = _head([[1, 0], [0, 1]])
    rows = [[float(i), 1.0] for i in range(10)]
    scaled = _fit("nac_imp", head, rows, alpha=0.0, o_star=50, fit_samples=100)      # O* = 50 * 10 / 100 = 5
    absolute = _fit("nac_imp", head, rows, alpha=0.0, o_star=50, fit_samples=None)   # O* = 50
    assert _score(scaled, [[7.0, 3.0]])[0] == pytest.approx(-1.0)
    assert _score(absolute, [[7.0, 3.0]])[0] == pytest.approx(-10 / 50)


def test_nac_balanced_subset():
    labels = torch.tensor([0] * 500 + [1] * 500 + [2] * 50)
    picked = balanced_subset(labels, len(labels), 300)
    assert torch.bincount(labels[picked]).tolist() == [100, 100, 50]
    assert torch.equal(picked, balanced_subset(labels, len(labels), 300))   # fixed seed
    assert len(balanced_subset(None, 1050, 300)) == 300


# ----- WeiPer -----------------------------------------------------------------------------------
def test_weiper_perturbed_rows_have_the_relative_length():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    pert = perturbed_head(w, 0.5, repeats=3, seed=1)
    assert pert.shape == (6, 2)
    dist = (pert.reshape(3, 2, 2) - w.double()[None]).norm(dim=2)   # repeat j occupies rows 2j, 2j + 1
    torch.testing.assert_close(dist, torch.tensor([[2.5, 0.5]] * 3, dtype=torch.float64))
    torch.testing.assert_close(perturbed_head(w, 0.5, 3, seed=1), pert)


def test_weiper_histograms_smoothing_and_kl_known_values():
    np.testing.assert_allclose(row_histograms(torch.tensor([[0.1, 0.2, 0.9, 1.5]]), 0.0, 1.0, 2).numpy(),
                               [[0.5, 0.25]])                                       # 1.5 is outside the range
    spike = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(smooth(spike, 3).numpy(), [[2 / 3, 1 / 3, 0, 0]])
    np.testing.assert_allclose(smooth(spike, 4).numpy(), [[0.5, 0.25, 0, 0]])      # 1 value before, 2 after
    kl = symmetric_kl(torch.tensor([0.5, 0.5]), torch.tensor([[0.25, 0.75]]), eps=1e-15)
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3) + 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl[0].item() == pytest.approx(expected)
    msp = mean_msp(torch.tensor([[0.0, 0.0, 10.0, 0.0]]), classes=2)
    assert msp[0].item() == pytest.approx((0.5 + 1 / (1 + math.exp(-10))) / 2)


def test_weiper_score_of_the_fit_sample_itself():
    # the input's histograms equal the fit set's (one row): both KL terms vanish; delta = 0: MSP of the head
    head, row = _head([[1, 0, 0], [0, 1, 0]]), [[0.5, 2.0, 1.0]]
    det = _fit("weiper", head, row, delta=0.0, repeats=2, smoothing=1, smoothing_perturbed=1, lambda2=1.0)
    msp = 1 / (1 + math.exp(-1.5))                                                   # logits (0.5, 2.0)
    assert _score(det, row)[0] == pytest.approx(-msp)
    assert _score(det, [[5.0, -3.0, 9.0]])[0] > -msp + 1.0                          # far outside the fit range


def test_new_detectors_save_and_load_their_state():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    fit = {"penultimate": torch.rand(60, 6), "logits": torch.zeros(60, 3), "labels": torch.arange(60) % 3}
    test = {"penultimate": torch.rand(7, 6)}
    for name in ("nac", "fdbd", "nci", "weiper"):
        det = build_detector(name, detector_config(name)).fit(FitData(head=head, id_train=fit))
        twin = build_detector(name, detector_config(name))
        twin.load_state(det.state())
        np.testing.assert_allclose(twin.score(test), det.score(test))
