"""Results in OpenOOD v1.5's CSV layout: one `openood/<detector>.csv` per detector of a run with near/far groups.

The layout is that of the DataFrame `Evaluator.eval_ood` returns and `scripts/eval_ood.py` saves with
`to_csv` (github.com/Jingkang50/OpenOOD, `openood/evaluation_api/evaluator.py`): an unnamed index column
with the near-OOD sets, `nearood`, the far-OOD sets, `farood` (the means are unweighted over the sets),
and the columns `FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC` in percent, ACC being the ID test accuracy on every
row (the evaluator whose `compute_all_metrics` returns these five; earlier v1.5 commits also had CCR_4..CCR_1
columns, which this export leaves out). The metrics are OpenOOD's own formulas (`c2ir.metrics.openood_metrics`): FPR@95 takes OOD as the
positive class here whatever `metrics.fpr_positive` says, and AUPR is the trapezoidal PR area. Sets
without a group follow, without a mean row.

Names are user input, neutralised as in every CSV c2ir writes (`c2ir.names`): the file name of a detector
through `safe_filename` (no `/`, no `..`), each set name in the index column through `csv_cell` (OWASP's
CSV-injection rule, control characters escaped). A detector whose scores are not finite has no metric and no
file; README.txt names it.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from c2ir.cache import atomic_write_bytes
from c2ir.groups import grouped_sets
from c2ir.metrics import OPENOOD_COLUMNS, openood_metrics
from c2ir.names import csv_cell, safe_filename
from c2ir.report import not_computable_line

log = logging.getLogger(__name__)

COLUMNS = (*OPENOOD_COLUMNS, "ACC")
MEAN_ROWS = {"near": "nearood", "far": "farood"}  # OpenOOD's index names of the group means
NOTE = ("These files follow OpenOOD v1.5's evaluator (openood/evaluation_api/evaluator.py): rows per OOD set, "
        "nearood / farood = unweighted means over the near / far sets; columns FPR@95, AUROC, AUPR_IN, AUPR_OUT, "
        "ACC in percent. FPR@95 takes OOD as the positive class (ID false-positive rate at 95% OOD true-positive "
        "rate; OpenOOD's convention, whatever metrics.fpr_positive says for c2ir's own tables); AUPR is the "
        "trapezoidal area under the precision-recall curve (sklearn.metrics.auc), as OpenOOD computes it; "
        "ACC is the ID test accuracy.\n")


def detector_rows(scores: Mapping[str, np.ndarray], result: Mapping) -> list[tuple[str, dict[str, float]]]:
    """(row name, {column: value}) in OpenOOD's order for one detector's scores per set."""
    id_name, acc = result["id_set"], 100.0 * float(result["id_accuracy"])
    per = {o: {**openood_metrics(scores[id_name], scores[o]), "ACC": acc} for o in result["ood_sets"]}
    out: list[tuple[str, dict[str, float]]] = []
    groups = grouped_sets(result)
    for g, sets in groups.items():
        out += [(o, per[o]) for o in sets]
        out.append((MEAN_ROWS[g], {c: float(np.mean([per[o][c] for o in sets])) for c in COLUMNS}))
    placed = {o for sets in groups.values() for o in sets}
    out += [(o, per[o]) for o in result["ood_sets"] if o not in placed]
    return out


def to_csv(rows: list[tuple[str, dict[str, float]]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", *COLUMNS])
    writer.writerows([[csv_cell(name), *(f"{m[c]:.4f}" for c in COLUMNS)] for name, m in rows])
    return buf.getvalue()


def write_openood_csvs(directory: Path, result: Mapping, scores: Mapping[str, Mapping[str, np.ndarray]]) -> list[Path]:
    """`<directory>/<detector>.csv` for every detector (+ README.txt stating the convention); [] without groups."""
    if not grouped_sets(result):
        return []
    directory.mkdir(parents=True, exist_ok=True)
    missing = not_computable_line(result)
    atomic_write_bytes(directory / "README.txt", (NOTE + (f"{missing}\n" if missing else "")).encode())
    written = []
    for det in result["metrics"]:
        if det not in scores:
            log.warning("openood export: no scores for %s; its CSV is not written", det)
            continue
        path = directory / f"{safe_filename(det)}.csv"
        atomic_write_bytes(path, to_csv(detector_rows(scores[det], result)).encode())
        written.append(path)
    return written
