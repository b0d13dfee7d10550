import torch

from c2ir import mgi


def _toy():
    torch.manual_seed(0)
    acts = [torch.randn(4, 3, 5, 5), torch.randn(4, 6, 3, 3), torch.randn(4, 8)]
    grads = [torch.randn_like(a) * s for a, s in zip(acts, (1.0, 0.5, 2.0))]
    return acts, grads


def test_weights_are_a_distribution():
    acts, grads = _toy()
    for method in mgi.METHODS:
        w = mgi.mgi_weights(acts, grads, method)
        assert w.shape == (3,)
        assert (w >= 0).all()
        assert torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.allclose(mgi.mgi_weights(acts, grads, "uniform"), torch.full((3,), 1 / 3))


def test_weights_respond_to_rescaled_activations():
    acts, grads = _toy()
    before = mgi.mgi_weights(acts, grads, "grad_x_act")
    acts[1] = acts[1] * 10.0
    after = mgi.mgi_weights(acts, grads, "grad_x_act")
    assert after[1] > before[1] + 0.1
    # gradient-magnitude weights respond to rescaled gradients (a layer the loss is more sensitive to)
    g_before = mgi.mgi_weights(acts, grads, "grad_abs")
    grads[0] = grads[0] * 10.0
    assert mgi.mgi_weights(acts, grads, "grad_abs")[0] > g_before[0] + 0.1


def test_all_zero_importance_falls_back_to_uniform():
    w = mgi.normalize_weights(torch.zeros(4))
    assert torch.allclose(w, torch.full((4,), 0.25))


def test_impression_importance_on_a_model():
    from c2ir.data.imageset import Normalizer
    from c2ir.models.small_cnn import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(1, 10, 4)
    imp = mgi.impression_importance(model, Normalizer([0.5], [0.5]), torch.rand(20, 1, 8, 8),
                                    torch.arange(20) % 10, ["act1", "act2", "act3"], batch_size=8)
    assert set(imp) == set(mgi.METHODS)
    assert all(v.shape == (3,) and (v >= 0).all() for v in imp.values())
    # hooks are gone afterwards
    assert all(not m._forward_hooks for m in model.modules())
