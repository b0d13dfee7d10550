import pytest
import torch

from c2ir import ipm
from c2ir.stats import compute_class_stats, layer_class_stats


def _stats(x, labels, k, spatial=None):
    s = layer_class_stats(x, labels, k)
    if spatial is not None:
        from c2ir.stats import class_samples
        s.samples = class_samples(spatial, labels, k, 10_000)
    return s


def test_mean_l2_closed_form_and_zero():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    s = _stats(x, labels, 3)
    pred = torch.tensor([2, 0, 1, 1, 0, 2])
    d = ipm.mean_l2(x, s.mean, pred)
    expected = torch.stack([torch.sqrt(((x[i] - x[labels == pred[i]].mean(0)) ** 2).sum()) for i in range(6)])
    assert torch.allclose(d, expected, atol=1e-5)
    # an input equal to its class mean has zero deviation under every mean-based IPM
    for fn in (ipm.mean_l2, ipm.mean_l1):
        assert torch.allclose(fn(s.mean, s.mean, torch.arange(3)), torch.zeros(3))
    assert torch.allclose(ipm.mean_standardized(s.mean, s.mean, s.var, torch.arange(3)), torch.zeros(3))


@pytest.mark.parametrize("name", sorted(ipm.IPMS))
def test_non_negative_and_grows_with_shift(name):
    torch.manual_seed(1)
    n, p, c, k = 40, 16, 8, 2
    spatial = torch.randn(n, p, c)
    pooled = spatial.mean(1)
    labels = torch.arange(n) % k
    stats = compute_class_stats({"layer/l": pooled, "spatial/l": spatial}, labels, ["l"], k, 512)["l"]
    f = ipm.get_ipm(name)
    extra = f.prepare(stats)
    pred = labels[:10]
    near = f(pooled[:10], spatial[:10], stats, pred, extra)
    far = f(pooled[:10] + 5.0, spatial[:10] + 5.0, stats, pred, extra)
    assert (near >= 0).all() and (far >= 0).all()
    assert (far > near).all()


def test_distribution_ipms_zero_for_identical_sets():
    torch.manual_seed(2)
    xs = torch.randn(1, 16, 4)
    samples = xs.clone()  # class 0's sample is exactly the input's spatial vectors
    pred = torch.tensor([0])
    h = ipm.median_bandwidth(samples[0])
    assert ipm.mmd_rbf(xs, samples, pred, h).item() == pytest.approx(0.0, abs=1e-3)
    assert ipm.wasserstein_channels(xs, samples, pred).item() == pytest.approx(0.0, abs=1e-6)
    proj = torch.nn.functional.normalize(torch.randn(4, 8), dim=0)
    assert ipm.sliced_wasserstein(xs, samples, pred, proj).item() == pytest.approx(0.0, abs=1e-6)


def test_wasserstein_matches_1d_shift():
    # W1 between a set and the same set shifted by 0.7 is 0.7 in every channel
    xs = torch.linspace(-1, 1, 16).view(1, 16, 1).repeat(1, 1, 3)
    samples = xs - 0.7
    assert ipm.wasserstein_channels(xs, samples, torch.tensor([0])).item() == pytest.approx(0.7, abs=1e-5)


def test_unknown_ipm_is_a_clear_error():
    from c2ir.errors import C2IRError

    with pytest.raises(C2IRError, match="unknown ipm"):
        ipm.get_ipm("nope")


def test_mahalanobis_known_answers():
    """Identity precision: the L2 distance to the class mean over sqrt(C); diagonal precision 1/var:
    mean_standardized with that variance; the stats' precision is the inverse of the Ledoit-Wolf covariance."""
    from sklearn.covariance import LedoitWolf

    torch.manual_seed(2)
    x = torch.randn(30, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    labels = torch.arange(30) % 3
    s = layer_class_stats(x, labels, 3)
    pred = torch.tensor([0, 1, 2] * 10)
    eye = torch.eye(4)
    assert torch.allclose(ipm.mahalanobis(x, s.mean, eye, pred).float(), ipm.mean_l2(x, s.mean, pred) / 2, atol=1e-5)
    var = torch.tensor([1.0, 4.0, 0.25, 9.0])
    tied_var = var.expand(3, 4)
    assert torch.allclose(ipm.mahalanobis(x, s.mean, torch.diag(1 / var), pred).float(),
                          ipm.mean_standardized(x, s.mean, tied_var, pred, eps=0.0), atol=1e-5)
    centred = (x.double() - s.mean.double()[labels]).numpy()
    expected = LedoitWolf(assume_centered=True).fit(centred).precision_
    assert torch.allclose(s.precision.double(), torch.from_numpy(expected), rtol=1e-4, atol=1e-5)
    assert torch.allclose(ipm.get_ipm("mahalanobis")(s.mean, None, s, torch.arange(3), {}), torch.zeros(3, dtype=torch.float64))
