import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from c2ir import metrics


def _sk_fpr95(id_s, ood_s):
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    fpr, tpr, _ = roc_curve(y, -np.r_[id_s, ood_s])
    return fpr[np.searchsorted(tpr, 0.95, side="left")]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_against_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    id_s, ood_s = rng.normal(0, 1, 300), rng.normal(1, 1.5, 200)
    if ties:
        id_s, ood_s = np.round(id_s, 0), np.round(ood_s, 0)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[id_s, ood_s]
    m = metrics.ood_metrics(id_s, ood_s)
    assert m["auroc"] == pytest.approx(100 * roc_auc_score(y, -s), abs=1e-9)
    assert m["aupr_in"] == pytest.approx(100 * average_precision_score(y, -s), abs=1e-9)
    assert m["aupr_out"] == pytest.approx(100 * average_precision_score(1 - y, s), abs=1e-9)
    assert m["fpr95"] == pytest.approx(100 * _sk_fpr95(id_s, ood_s), abs=1e-9)


def test_hand_computed_cases():
    # perfectly separated: OOD scores all above ID scores
    assert metrics.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert metrics.fpr_at_tpr(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert metrics.detection_accuracy(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    # reversed: every OOD looks more ID than every ID sample
    assert metrics.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert metrics.fpr_at_tpr(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    # all tied: chance
    assert metrics.auroc(np.zeros(5), np.zeros(7)) == pytest.approx(0.5)
    # ID 0..19, OOD 10..29: to accept 95% of ID (19 of 20) the threshold admits 9 of 20 OOD
    id_s, ood_s = np.arange(20.0), np.arange(10.0, 30.0)
    assert metrics.fpr_at_tpr(id_s, ood_s) == pytest.approx(9 / 20)


def test_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert metrics.accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)


def test_columnwise_auroc_is_auroc_per_column():
    rng = np.random.default_rng(0)
    id_cols, ood_cols = rng.normal(0, 1, (80, 3)), rng.normal([0.0, 1.0, -1.0], 1, (60, 3))
    got = metrics.columnwise_auroc(id_cols, ood_cols)
    y = np.r_[np.zeros(80), np.ones(60)]  # OOD positive for sklearn, higher score = OOD
    want = [100 * roc_auc_score(y, np.r_[id_cols[:, j], ood_cols[:, j]]) for j in range(3)]
    assert np.allclose(got, want)
    assert got[1] > 60 > got[2]
    with pytest.raises(ValueError, match="column counts differ"):
        metrics.columnwise_auroc(id_cols, ood_cols[:, :2])
