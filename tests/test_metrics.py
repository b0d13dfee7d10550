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


def _sk_fpr95_ood_positive(id_s, ood_s):
    """OpenOOD v1.5's FPR@95 (openood/evaluators/metrics.py): roc_curve(ood_indicator, -conf), conf = -score."""
    ood_indicator = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
    fpr, tpr, _ = roc_curve(ood_indicator, np.r_[id_s, ood_s])
    return fpr[np.argmax(tpr >= 0.95)]


TINY_CASES = [  # (ID scores, OOD scores): tiny arrays with ties, where the two conventions differ
    (np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0, 5.0, 6.0])),
    (np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.9, 0.3, 0.7])),
    (np.array([1.0, 1.0, 2.0]), np.array([1.0, 3.0])),
]


@pytest.mark.parametrize("id_s,ood_s", TINY_CASES)
def test_both_fpr_conventions_against_sklearn_roc_curve(id_s, ood_s):
    assert metrics.fpr_at_tpr(id_s, ood_s, positive="id") == pytest.approx(_sk_fpr95(id_s, ood_s))
    assert metrics.fpr_at_tpr(id_s, ood_s, positive="ood") == pytest.approx(_sk_fpr95_ood_positive(id_s, ood_s))
    m_id, m_ood = metrics.ood_metrics(id_s, ood_s, "id"), metrics.ood_metrics(id_s, ood_s, "ood")
    assert m_id["fpr95"] == pytest.approx(100 * _sk_fpr95(id_s, ood_s))
    assert m_ood["fpr95"] == pytest.approx(100 * _sk_fpr95_ood_positive(id_s, ood_s))
    assert {k: v for k, v in m_id.items() if k != "fpr95"} == {k: v for k, v in m_ood.items() if k != "fpr95"}


def test_the_conventions_are_different_numbers_with_known_answers():
    # ID 0..3, OOD 2..6. ID positive: accepting 95% of ID (all 4) needs threshold >= 3, which accepts OOD 2 and 3:
    # 2 of 5. OOD positive: flagging 95% of OOD (all 5) needs threshold <= 2, which flags ID 2 and 3: 2 of 4.
    id_s, ood_s = TINY_CASES[0]
    assert metrics.fpr_at_tpr(id_s, ood_s, positive="id") == pytest.approx(2 / 5)
    assert metrics.fpr_at_tpr(id_s, ood_s, positive="ood") == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="positive"):
        metrics.fpr_at_tpr(id_s, ood_s, positive="both")


@pytest.mark.parametrize("seed", [0, 1])
def test_openood_metrics_reproduce_openood_formulas_with_sklearn(seed):
    """OpenOOD v1.5's auc_and_fpr_recall, written with sklearn: AUPR is metrics.auc over the PR curve."""
    from sklearn.metrics import auc, precision_recall_curve

    rng = np.random.default_rng(seed)
    id_s, ood_s = np.round(rng.normal(0, 1, 40), 1), np.round(rng.normal(1, 1, 30), 1)  # ties included
    conf = -np.r_[id_s, ood_s]
    ood_indicator = np.r_[np.zeros(40), np.ones(30)]
    fpr, tpr, _ = roc_curve(ood_indicator, -conf)
    p_in, r_in, _ = precision_recall_curve(1 - ood_indicator, conf)
    p_out, r_out, _ = precision_recall_curve(ood_indicator, -conf)
    got = metrics.openood_metrics(id_s, ood_s)
    assert got["FPR@95"] == pytest.approx(100 * fpr[np.argmax(tpr >= 0.95)])
    assert got["AUROC"] == pytest.approx(100 * auc(fpr, tpr))
    assert got["AUPR_IN"] == pytest.approx(100 * auc(r_in, p_in))
    assert got["AUPR_OUT"] == pytest.approx(100 * auc(r_out, p_out))
    assert tuple(got) == metrics.OPENOOD_COLUMNS
