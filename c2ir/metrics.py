"""OOD detection metrics, pure numpy. Convention: scores are higher for OOD; ID is the positive class.

FPR95 follows the ODIN / Mahalanobis / C2IR convention by default (`positive="id"`): the false-positive
rate on OOD data at the threshold where 95% of ID samples are accepted as ID. OpenOOD v1.5 takes OOD as
the positive class (`positive="ood"`: the share of ID samples flagged as OOD at the threshold that flags
95% of the OOD samples; `roc_curve(ood_indicator, -conf)` in `openood/evaluators/metrics.py`), which
gives other numbers for the same scores; `metrics.fpr_positive=id|ood` chooses, and every table names it.
Ties are handled as in scikit-learn (a threshold is placed only between distinct score values).

`openood_metrics` reproduces OpenOOD v1.5's evaluator (`auc_and_fpr_recall`): its FPR@95 with OOD
positive, and AUPR as the trapezoidal area under the precision-recall curve (`metrics.auc(recall,
precision)`), where c2ir's own AUPR-In/Out are step-wise average precision.
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


FPR_POSITIVE = ("id", "ood")


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr_level: float = 0.95, positive: str = "id") -> float:
    """FPR at the first threshold reaching `tpr_level` TPR. positive="id": OOD accepted as ID while `tpr_level`
    of ID is accepted; positive="ood" (OpenOOD): ID flagged as OOD while `tpr_level` of OOD is flagged."""
    if positive not in FPR_POSITIVE:
        raise ValueError(f"positive={positive!r}; use one of {FPR_POSITIVE}")
    if positive == "ood":  # OOD positive, ranked by score = the ID-positive curve of the swapped, negated scores
        id_scores, ood_scores = -np.asarray(ood_scores, np.float64), -np.asarray(id_scores, np.float64)
    fpr, tpr, _ = roc_points(id_scores, ood_scores)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def pr_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at each distinct threshold, `pos` ranked above `neg` by higher score (highest first)."""
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    s = np.concatenate([pos, neg]).astype(np.float64)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    ends = np.r_[np.where(np.diff(s))[0], len(y) - 1]
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    return tps / (tps + fps), tps / max(tps[-1], 1)


def pr_auc_trapezoid(pos: np.ndarray, neg: np.ndarray) -> float:
    """Trapezoidal area under the precision-recall curve of `pos` ranked above `neg` by higher score:
    scikit-learn's `auc(recall, precision)` of `precision_recall_curve`, which starts at (recall 0, precision 1)."""
    precision, recall = pr_points(pos, neg)
    return float(_trapezoid(np.r_[1.0, precision], np.r_[0.0, recall]))


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step-wise average precision of `pos` ranked above `neg` by higher score (sklearn's definition)."""
    precision, recall = pr_points(pos, neg)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def detection_accuracy(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """max over thresholds of 0.5 * (TPR + TNR) (ODIN's detection accuracy)."""
    fpr, tpr, _ = roc_points(id_scores, ood_scores)
    return float(np.max(0.5 * (tpr + 1.0 - fpr)))


def require_finite(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both score arrays as float64, refused when any is NaN or infinite: a NaN has no rank (it would count as
    the lowest score and give AUROC 0 / FPR95 100 as if measured)."""
    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("scores contain NaN or infinite values: no metric can be computed from them")
    return id_scores, ood_scores


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, fpr_positive: str = "id") -> dict[str, float]:
    """All metrics, in percent, for one detector on one ID/OOD pair (FPR95 with `fpr_positive` as positive).
    Scores must be finite (`require_finite`)."""
    id_scores, ood_scores = require_finite(id_scores, ood_scores)
    return {
        "fpr95": 100 * fpr_at_tpr(id_scores, ood_scores, positive=fpr_positive),
        "auroc": 100 * auroc(id_scores, ood_scores),
        "aupr_in": 100 * average_precision(-id_scores, -ood_scores),
        "aupr_out": 100 * average_precision(ood_scores, id_scores),
        "detection_acc": 100 * detection_accuracy(id_scores, ood_scores),
    }


OPENOOD_COLUMNS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT")  # + ACC (ID accuracy), openood/evaluation_api/evaluator.py


def openood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """OpenOOD v1.5's metrics in percent, from c2ir scores (higher = OOD; OpenOOD's conf = -score):
    FPR@95 with OOD positive, AUROC, AUPR_IN (ID positive) and AUPR_OUT (OOD positive) as trapezoidal PR areas.
    Scores must be finite (`require_finite`)."""
    id_scores, ood_scores = require_finite(id_scores, ood_scores)
    return {"FPR@95": 100 * fpr_at_tpr(id_scores, ood_scores, positive="ood"),
            "AUROC": 100 * auroc(id_scores, ood_scores),
            "AUPR_IN": 100 * pr_auc_trapezoid(-id_scores, -ood_scores),
            "AUPR_OUT": 100 * pr_auc_trapezoid(ood_scores, id_scores)}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def columnwise_auroc(id_cols: np.ndarray, ood_cols: np.ndarray) -> list[float]:
    """AUROC (%) of each column of (N, L) ID and (M, L) OOD scores on its own (e.g. one C2IR layer's deviation)."""
    id_cols, ood_cols = np.atleast_2d(np.asarray(id_cols, np.float64)), np.atleast_2d(np.asarray(ood_cols, np.float64))
    if id_cols.shape[1] != ood_cols.shape[1]:
        raise ValueError(f"column counts differ: {id_cols.shape[1]} (ID) vs {ood_cols.shape[1]} (OOD)")
    return [100 * auroc(id_cols[:, j], ood_cols[:, j]) for j in range(id_cols.shape[1])]
