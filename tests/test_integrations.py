"""c2ir from pytorch-ood and OpenOOD (issue 23, part 5): each library's own conventions, on a tiny model."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from c2ir.errors import C2IRError
from c2ir.metrics import auroc


def _model():
    """2-D inputs -> ReLU features (the penultimate layer) -> 3 logits; fixed weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
        model[0].bias.zero_()
    return model.eval()


def _blobs(n, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])
    y = torch.arange(n) % 3
    return centres[y] + 0.3 * torch.randn(n, 2, generator=g) + shift, y


def _loader(x, y, batch=16):
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


# ----- pytorch-ood ------------------------------------------------------------------------------
def test_pytorch_ood_detector_with_its_own_metrics():
    pytest.importorskip("pytorch_ood")
    from pytorch_ood.metrics import OODMetrics

    from c2ir.integrations.pytorch_ood import C2IRDetector

    model = _model()
    x_fit, y_fit = _blobs(150)
    x_id, y_id = _blobs(60, seed=1)
    x_ood, _ = _blobs(60, shift=10.0, seed=2)
    for name in ("knn", "fdbd", "energy"):
        det = C2IRDetector(name, model).fit(_loader(x_fit, y_fit))
        metrics = OODMetrics()
        s_id, s_ood = det(x_id), det.predict(x_ood)
        metrics.update(s_id, y_id)
        metrics.update(s_ood, -torch.ones(len(x_ood), dtype=torch.long))   # pytorch-ood: label < 0 = OOD
        got = metrics.compute()
        # the same convention (higher = more OOD) as c2ir's own metrics
        assert got["AUROC"] == pytest.approx(auroc(s_id.numpy(), s_ood.numpy()), abs=1e-6), name
    assert got["AUROC"] < 0.5          # Energy calls the far, confident blob more ID: a real score, not a constant
    knn = C2IRDetector("knn", model, k=5).fit(_loader(x_fit, y_fit))
    metrics = OODMetrics()
    metrics.update(knn(torch.cat([x_id, x_ood])), torch.cat([y_id, -torch.ones(60, dtype=torch.long)]))
    assert metrics.compute()["AUROC"] == 1.0


def test_pytorch_ood_fit_ignores_ood_rows_and_features_match_inputs():
    pytest.importorskip("pytorch_ood")
    from c2ir.integrations.pytorch_ood import C2IRDetector

    model = _model()
    x_fit, y_fit = _blobs(90)
    x_far, _ = _blobs(30, shift=6.0, seed=3)
    mixed = _loader(torch.cat([x_fit, x_far]), torch.cat([y_fit, -torch.ones(30, dtype=torch.long)]))
    x_test, _ = _blobs(20, seed=4)
    clean = C2IRDetector("mahalanobis", model).fit(_loader(x_fit, y_fit))
    with_ood = C2IRDetector("mahalanobis", model).fit(mixed)
    torch.testing.assert_close(clean(x_test), with_ood(x_test))
    # the feature path: penultimate features (the ReLU outputs) give the input path's scores
    feats = C2IRDetector("mahalanobis", model)
    with torch.no_grad():
        feats.fit_features(model[:2](x_fit), y_fit)
        z_test = model[:2](x_test)
    torch.testing.assert_close(feats.predict_features(z_test), clean(x_test), rtol=1e-5, atol=1e-6)
    with pytest.raises(C2IRError, match="fit\\(loader\\)"):
        C2IRDetector("knn_imp", model).fit_features(model[:2](x_fit), y_fit)
    with pytest.raises(C2IRError, match="pass the labels"):
        C2IRDetector("mahalanobis", model).fit_features(model[:2](x_fit))


# ----- OpenOOD ----------------------------------------------------------------------------------
def _dict_loader(x, y, batch=16):
    return [{"data": x[i:i + batch], "label": y[i:i + batch]} for i in range(0, len(x), batch)]


def _openood_eval(post, net, id_loader_dict, ood_loader_dict):
    """A stand-in for OpenOOD v1.5's Evaluator.eval_ood: setup once, inference per set, OOD label -1,
    metrics from conf with higher = ID (OpenOOD computes roc_curve(ood_indicator, -conf))."""
    post.setup(net, id_loader_dict, ood_loader_dict)
    id_pred, id_conf, id_gt = post.inference(net, id_loader_dict["test"], progress=False)
    rows = {}
    for split in ("near", "far"):
        for name, loader in ood_loader_dict[split].items():
            _, ood_conf, ood_gt = post.inference(net, loader, progress=False)
            conf = np.concatenate([id_conf, ood_conf])
            label = np.concatenate([id_gt, -1 * np.ones_like(ood_gt)])
            ood = (label == -1).astype(int)
            rows[name] = roc_auc_score(ood, -conf)       # OpenOOD's AUROC: OOD positive, -conf its score
    return id_pred, id_conf, rows


def test_openood_postprocessor_in_a_stand_in_evaluator():
    from c2ir.integrations.openood import C2IRPostprocessor

    net = _model()
    x_fit, y_fit = _blobs(150)
    x_id, y_id = _blobs(60, seed=1)
    x_near, y_near = _blobs(60, shift=1.5, seed=5)
    x_far, y_far = _blobs(60, shift=8.0, seed=6)
    id_dict = {"train": _dict_loader(x_fit, y_fit), "val": _dict_loader(x_id, y_id), "test": _dict_loader(x_id, y_id)}
    ood_dict = {"val": _dict_loader(x_near, y_near), "near": {"shifted": _dict_loader(x_near, y_near)},
                "far": {"far": _dict_loader(x_far, y_far)}}
    post = C2IRPostprocessor("knn", k=5)
    assert post.APS_mode is False
    id_pred, id_conf, rows = _openood_eval(post, net, id_dict, ood_dict)
    np.testing.assert_array_equal(id_pred, net(x_id).argmax(1).numpy())   # pred = the classifier's class
    assert rows["far"] == 1.0                                              # conf higher = ID
    assert 0.5 < rows["shifted"] < rows["far"]
    # conf is the negated c2ir score of the same fitted detector
    pred, conf = post.postprocess(net, x_id[:5])
    torch.testing.assert_close(conf, -post.detector.score(x_id[:5]))
    with pytest.raises(C2IRError, match="setup"):
        C2IRPostprocessor("knn").postprocess(net, x_id[:2])
