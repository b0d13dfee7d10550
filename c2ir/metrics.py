"""OOD detection metrics, pure numpy. Convention: scores are higher for OOD; ID is the positive class.

FPR95 follows the ODIN / Mahalanobis / C2IR convention: the false-positive rate on OOD
data at the threshold where 95% of ID samples are accepted as ID. Ties are handled as in
scikit-learn (a threshold is placed only between distinct score values).
"""

from __future__ import annotations

import numpy as np

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz


def roc_points(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) treating ID as positive and -score as the ID-ness, like sklearn.roc_curve."""
    y = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    s = -np.concatenate([id_scores, ood_scores]).astype(np.float64)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    ends = np.r_[distinct, len(y) - 1]
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr, np.r_[np.inf, s[ends]]


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_points(id_scores, ood_scores)
    return float(_trapezoid(tpr, fpr))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr_level: float = 0.95) -> float:
    fpr, tpr, _ = roc_points(id_scores, ood_scores)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step-wise average precision of `pos` ranked above `neg` by higher score (sklearn's definition)."""
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    s = np.concatenate([pos, neg]).astype(np.float64)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    ends = np.r_[np.where(np.diff(s))[0], len(y) - 1]
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / max(tps[-1], 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def detection_accuracy(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """max over thresholds of 0.5 * (TPR + TNR) (ODIN's detection accuracy)."""
    fpr, tpr, _ = roc_points(id_scores, ood_scores)
    return float(np.max(0.5 * (tpr + 1.0 - fpr)))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """All metrics, in percent, for one detector on one ID/OOD pair. Scores must be finite: a NaN has no
    rank (it would count as the lowest score and give AUROC 0 / FPR95 100 as if measured)."""
    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("scores contain NaN or infinite values: no metric can be computed from them")
    return {
        "fpr95": 100 * fpr_at_tpr(id_scores, ood_scores),
        "auroc": 100 * auroc(id_scores, ood_scores),
        "aupr_in": 100 * average_precision(-id_scores, -ood_scores),
        "aupr_out": 100 * average_precision(ood_scores, id_scores),
        "detection_acc": 100 * detection_accuracy(id_scores, ood_scores),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def columnwise_auroc(id_cols: np.ndarray, ood_cols: np.ndarray) -> list[float]:
    """AUROC (%) of each column of (N, L) ID and (M, L) OOD scores on its own (e.g. one C2IR layer's deviation)."""
    id_cols, ood_cols = np.atleast_2d(np.asarray(id_cols, np.float64)), np.atleast_2d(np.asarray(ood_cols, np.float64))
    if id_cols.shape[1] != ood_cols.shape[1]:
        raise ValueError(f"column counts differ: {id_cols.shape[1]} (ID) vs {ood_cols.shape[1]} (OOD)")
    return [100 * auroc(id_cols[:, j], ood_cols[:, j]) for j in range(id_cols.shape[1])]
