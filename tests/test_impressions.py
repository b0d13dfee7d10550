"""DeepInversion on a small trained model: BN loss falls, impressions hit their class, seeds repeat."""


import pytest
import torch

from c2ir.data.embedded import digits
from c2ir.data.imageset import Normalizer
from c2ir.impressions import SynthConfig, batch_targets, synthesize_batch
from c2ir.models.small_cnn import SmallCNN


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SmallCNN trained on the embedded digits by the train stage's loop (c2ir.training, train=default: about 5 s)."""
    from c2ir.schema import TrainConfig
    from c2ir.training import train_classifier

    torch.manual_seed(0)
    norm = Normalizer([0.3], [0.4])
    model, _ = train_classifier(SmallCNN(1, 10, 16), digits("train", 0), digits("test", 0), norm, TrainConfig(),
                                tmp_path_factory.mktemp("train"), flip=False, seed=0)
    test = digits("test", 0)
    acc = (model(norm(test.images)).argmax(1) == test.labels).float().mean()
    assert acc > 0.9
    return model, norm


def test_bn_loss_falls_and_targets_are_hit(trained):
    model, norm = trained
    cfg = SynthConfig(per_class=10, batch_size=100, iterations=300, lr=0.1, jitter=1, flip=False, warmup_iterations=0,
                      bn_stats="hooks")  # synth=deepinversion's budget
    targets = batch_targets(10, 10, 100, 0)
    res = synthesize_batch(model, norm, targets, (1, 8, 8), cfg, seed=0)
    bn = res.curves["bn"]
    assert bn[-10:].mean() < bn[:3].mean() / 5, "BN-statistics loss should fall by a large factor"
    assert res.images.min() >= 0 and res.images.max() <= 1
    with torch.no_grad():
        pred = model(norm(res.images)).argmax(1)
    assert (pred == targets).float().mean() >= 0.9
    assert all(not m._forward_hooks for m in model.modules()), "BN hooks must be removed"


def test_same_seed_same_impressions(trained):
    model, norm = trained
    cfg = SynthConfig(iterations=5, jitter=1, flip=False)
    t = batch_targets(10, 2, 20, 0)
    a = synthesize_batch(model, norm, t, (1, 8, 8), cfg, seed=3).images
    b = synthesize_batch(model, norm, t, (1, 8, 8), cfg, seed=3).images
    c = synthesize_batch(model, norm, t, (1, 8, 8), cfg, seed=4).images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_divergence_names_iteration_and_fix(trained):
    from c2ir.errors import C2IRError

    model, norm = trained
    cfg = SynthConfig(iterations=3, bn_weight=float("nan"))
    with pytest.raises(C2IRError, match=r"iteration 0 .*lower synth.lr"):
        synthesize_batch(model, norm, batch_targets(10, 1, 10, 0), (1, 8, 8), cfg, seed=0)


def test_class_balanced_targets():
    all_t = torch.cat([batch_targets(10, 7, 32, b) for b in range(3)])
    assert len(all_t) == 70 and torch.equal(torch.bincount(all_t), torch.full((10,), 7))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "2d"])
def test_channel_mean_var_matches_the_reference_formula_and_its_gradient(layout):
    """The fused statistics (closed-form backward) equal torch.var_mean with autograd: values and input gradients."""
    from c2ir.impressions import channel_mean_var, channel_mean_var_reference

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 5, 6, 4, generator=g) * 2 + 1 if layout != "2d" else torch.randn(9, 5, generator=g) * 2 + 1
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w_mean, w_var = torch.randn(5, generator=g), torch.randn(5, generator=g)
    out = {}
    for name, fn in (("fused", channel_mean_var), ("reference", channel_mean_var_reference)):
        x = x0.clone().requires_grad_(True)
        mean, var = fn(x)
        ((mean * w_mean).sum() + (var * w_var).sum() + torch.linalg.vector_norm(var - 3.0)).backward()
        out[name] = (mean.detach(), var.detach(), x.grad)
    for a, b in zip(out["fused"], out["reference"]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


def test_synthesis_with_fused_statistics_matches_the_reference_formula(trained):
    """Same loss curves and impressions for a few iterations as with the textbook statistics."""
    from c2ir.impressions import channel_mean_var_reference

    model, norm = trained
    cfg = SynthConfig(iterations=8, jitter=1, flip=True, warmup_iterations=0, bn_stats="hooks")  # stats_fn: hooks only
    t = batch_targets(10, 4, 40, 0)
    fused = synthesize_batch(model, norm, t, (1, 8, 8), cfg, seed=1)
    ref = synthesize_batch(model, norm, t, (1, 8, 8), cfg, seed=1, stats_fn=channel_mean_var_reference)
    for k in ("total", "bn", "ce"):
        assert torch.allclose(fused.curves[k], ref.curves[k], rtol=1e-4, atol=1e-5), (k, fused.curves[k], ref.curves[k])
    assert torch.allclose(fused.images, ref.images, atol=1e-4)


def test_bn_reduce_mean_is_the_per_layer_average():
    from c2ir.errors import C2IRError
    from c2ir.impressions import BNStatLoss
    from c2ir.models.small_cnn import SmallCNN

    model = SmallCNN(1, 10, 4).eval()
    x = torch.randn(6, 1, 8, 8)
    losses = {}
    for reduce in ("sum", "mean"):
        with BNStatLoss(model, 10.0, reduce) as bn:
            model(x)
            losses[reduce] = bn.pop()
    assert losses["mean"].item() == pytest.approx(losses["sum"].item() / 3, rel=1e-6)  # 3 BN layers
    with pytest.raises(C2IRError, match="bn_reduce='max'"):
        BNStatLoss(model, 10.0, "max")


def test_bn_reduce_is_in_the_synth_key(tmp_path):
    from c2ir.graph import key_of
    from c2ir.stages.job import cli_job
    from c2ir.stages.synthesize import SYNTHESIZE
    from conftest import make_cfg

    keys = {v: key_of(SYNTHESIZE, cli_job(make_cfg(tmp_path, [f"synth.bn_reduce={v}"]))) for v in ("sum", "mean")}
    assert keys["sum"] != keys["mean"]
