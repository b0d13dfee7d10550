"""Published results of other papers, shipped as small cited tables (read-only data, never measured here).

`openood_v15.csv`: OpenOOD v1.5's near-/far-OOD AUROC of the post-hoc methods, per benchmark (the
`report.published` key an `experiment=openood_*` sets); its header comment names the source file and
commit of each benchmark. The run page shows these rows apart from the measured ones, labelled with
their architecture and "not this model".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

TABLE = "openood_v15.csv"
REPOSITORY = "github.com/Jingkang50/OpenOOD"


@dataclass(frozen=True)
class PublishedRow:
    method: str
    near_auroc: float
    far_auroc: float
    near_std: str  # as published ("" when the source gives none)
    far_std: str
    id_accuracy: float | None
    arch: str
    source: str  # the file in the repository (its commit: `commits()`)


def _lines() -> list[str]:
    return resources.files(__package__).joinpath(TABLE).read_text(encoding="utf-8").splitlines()


def commits() -> dict[str, str]:
    """{benchmark: 'path at commit <sha>'} from the table's header comment."""
    out = {}
    for line in _lines():
        if line.startswith("#   ") and ": " in line:
            bench, _, where = line[4:].partition(": ")
            out[bench.strip()] = where.strip()
    return out


def benchmarks() -> list[str]:
    return sorted({r["benchmark"] for r in csv.DictReader(line for line in _lines() if not line.startswith("#"))})


def rows(benchmark: str) -> list[PublishedRow]:
    """The published rows of one benchmark, in the table's order ([] for a benchmark it does not hold)."""
    out = []
    for r in csv.DictReader(line for line in _lines() if not line.startswith("#")):
        if r["benchmark"] != benchmark:
            continue
        acc = r["id_accuracy"].strip()
        out.append(PublishedRow(r["method"], float(r["near_auroc"]), float(r["far_auroc"]), r["near_auroc_std"].strip(),
                                r["far_auroc_std"].strip(), float(acc) if acc not in ("", "/") else None, r["arch"],
                                r["source"]))
    return out
