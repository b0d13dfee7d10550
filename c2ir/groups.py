"""Near-OOD / far-OOD groups of the OOD sets, and their means (pure; no I/O).

OpenOOD v1.5 reports each benchmark as two numbers, near-OOD and far-OOD, each the unweighted mean over
its sets (`np.mean(metrics_list, axis=0)` in `openood/evaluation_api/evaluator.py`). A set's group comes
from its config (`ood.<set>.group: near|far`); the evaluation report copies `{column: group}` into
`results.json` as `groups`. Runs whose sets declare no group have no group rows (as before).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

GROUPS = ("near", "far")


def groups_of(cfg: Any) -> dict[str, str]:
    """{result column: group} for the selected OOD sets that declare `group`."""
    from c2ir.validation import ood_names

    names = ood_names(cfg)
    return {names[key]: str(cfg.ood[key].group) for key in cfg.ood if cfg.ood[key].get("group")}


def grouped_sets(result: Mapping[str, Any]) -> dict[str, list[str]]:
    """{group: its sets in the result's order} for the groups that have sets (empty without groups)."""
    groups = result.get("groups") or {}
    out = {g: [o for o in result["ood_sets"] if groups.get(o) == g] for g in GROUPS}
    return {g: sets for g, sets in out.items() if sets}


def mean_over(per_set: Mapping[str, Mapping[str, float]], sets: Sequence[str], metric: str) -> float:
    """Unweighted mean of one metric over `sets` (each set counts once, whatever its size)."""
    return float(np.mean([per_set[s][metric] for s in sets]))


def column_sets(result: Mapping[str, Any]) -> dict[str, list[str]]:
    """The summary columns: every set alone, then `mean` (all sets), then `near mean` / `far mean` when grouped."""
    cols = {o: [o] for o in result["ood_sets"]}
    cols["mean"] = list(result["ood_sets"])
    cols.update({f"{g} mean": sets for g, sets in grouped_sets(result).items()})
    return cols
