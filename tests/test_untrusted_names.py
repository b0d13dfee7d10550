"""Issue 24: file names, set names and detector names are user input on their way into CSV cells, log lines,
`skipped.txt`, report file names and the HTML page: neutralised there, and recoverable where it matters."""

from __future__ import annotations

import csv
import html.parser

import numpy as np
import pytest
import torch
from PIL import Image

from c2ir import cli
from conftest import make_cfg

NASTY = ["=cmd()+A1.png", "+1.png", "-2+3.png", "@SUM(A1).png", "\tx.png", "\rcr.png", "'quoted.png",
         "a\nb.png", "back\\slash.png", "rtl\u202egnp.exe.png", "caf\u00e9.png", "plain.png"]


def test_csv_cells_and_escaped_names_round_trip():
    from c2ir.names import csv_cell, csv_uncell, escape_name, unescape_name

    for name in [*NASTY, "surrogate-\udcff.png", "\\x41 literal.png"]:
        cell = csv_cell(name)
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert cell.isprintable() and csv_uncell(cell) == name
        assert "\n" not in escape_name(name) and unescape_name(escape_name(name)) == name


def test_safe_filename_stays_one_component():
    from c2ir.names import safe_filename

    for name in ["../../../../TRAV", "a/b", "..", ".hidden", "x\n/y", "", "ok-name_1.2"]:
        safe = safe_filename(name)
        assert "/" not in safe and not safe.startswith(".") and safe.isprintable() and safe
    assert safe_filename("ok-name_1.2") == "ok-name_1.2"
    assert safe_filename("a/b") != safe_filename("a_b")  # two names never share a file


def test_score_csv_skipped_txt_and_logs_neutralise_file_names(tmp_path, monkeypatch, capsys):
    """Issue: `=cmd()+A1.png` became a formula cell; names with \\n split skipped.txt entries and forged log lines."""
    from c2ir.models import build_model

    torch.manual_seed(0)
    torch.save(build_model(make_cfg(tmp_path).model).state_dict(), tmp_path / "ck.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in NASTY:
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / name, format="PNG")
    forged = "bad\n[2099-01-01 00:00:00,000][c2ir][INFO] - FORGED.png"
    (folder / forged).write_bytes(b"not an image")  # unreadable: skipped, logged, listed
    monkeypatch.chdir(tmp_path)
    code = cli.main(["score", f"model.checkpoint={tmp_path / 'ck.pt'}", f"score.input={folder}", "score.detector=msp",
                     "detectors=[msp]", "ood=[gaussian_noise]", "synth.per_class=1", "synth.iterations=2",
                     f"cache_root={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "num_workers=0"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    with open(tmp_path / "run" / "scores.csv", newline="") as f:
        rows = list(csv.reader(f))
    cells = [r[0] for r in rows[1:]]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
    assert all(c.isprintable() for c in cells)
    log = out.out + out.err + (tmp_path / "run" / "score.log").read_text()
    assert not [line for line in log.splitlines() if line.startswith("[2099")], "a file name forged a log line"
    skipped = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1  # one entry per unreadable file
    from c2ir.names import csv_uncell, unescape_name  # the documented way back to the original names

    assert sorted(csv_uncell(c) for c in cells) == sorted(NASTY)
    assert [unescape_name(s) for s in skipped] == [forged]


# ----- the HTML page and the report's file names --------------------------------------------------------
PAYLOADS = ['<script>alert(1)</script>', '" onmouseover="alert(2)', "'><img src=x onerror=alert(3)>",
            "../../../../TRAV", "a/b"]
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "nav", "ul", "li", "a",
                "div", "table", "tr", "th", "td", "img", "pre"}
ALLOWED_ATTRS = {"lang", "charset", "id", "href", "class", "colspan", "alt", "src"}


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def _result(oods, dets):
    m = {"fpr95": 50.0, "auroc": 60.0, "aupr_in": 55.0, "aupr_out": 52.0, "detection_acc": 58.0}
    return {"id_set": PAYLOADS[0], "id_accuracy": 0.9, "ood_sets": oods, "counts": {o: 5 for o in oods},
            "access": {d: "data-free" for d in dets}, "metrics": {d: {o: dict(m) for o in oods} for d in dets},
            "layer_weights": {"layers": PAYLOADS[:2], "weights": [0.5, 0.5], "method": PAYLOADS[1]},
            "layer_auroc": {dets[0]: {"layers": PAYLOADS[:2], "auroc": {o: [50.0, 60.0] for o in oods}}},
            "not_computable": {PAYLOADS[2]: PAYLOADS[0]},
            "groups": {o: "near" if i % 2 == 0 else "far" for i, o in enumerate(oods)}}  # near/far rows (issue 23b)


@pytest.fixture(scope="module")
def page_with_payloads(tmp_path_factory):
    """One report page (figures and all) written from inputs full of payloads, shared by the two tests."""
    tmp_path = tmp_path_factory.mktemp("payloads")
    return (tmp_path, *_write_page(tmp_path))


def _write_page(tmp_path):
    from c2ir.report_html import RunInputs, write_run_report

    oods, dets = PAYLOADS[1:], ["c2ir" + PAYLOADS[0], PAYLOADS[1], PAYLOADS[3]]
    rng = np.random.default_rng(0)
    scores = {d: {s: rng.normal(size=20) for s in [PAYLOADS[0], *oods]} for d in dets}
    run = tmp_path / "a" / "b" / "c" / "d" / "run"
    run.mkdir(parents=True)
    inp = RunInputs(result=_result(oods, dets), scores=scores, config_yaml=f"ood:\n  name: {PAYLOADS[0]}",
                    keys={PAYLOADS[0]: PAYLOADS[1]}, notes=[PAYLOADS[2]], figure_cache=tmp_path / "figs",
                    published="openood_cifar10")  # the summary figure and the published rows: payload names too
    path = write_run_report(run, inp)
    assert path is not None
    return run, path.read_text()


def test_report_page_escapes_every_user_string(page_with_payloads):
    """OOD set names, detector names, layer names, config values, artifact keys and notes with <script> and
    attribute-breaking payloads: no tag or attribute of theirs reaches the page (the audit of every place a
    user string reaches report_html found them all escaped; this pins it)."""
    _, _, page = page_with_payloads
    parser = _Tags()
    parser.feed(page)
    assert {t for t, _ in parser.tags} <= ALLOWED_TAGS, {t for t, _ in parser.tags} - ALLOWED_TAGS
    attrs = {a for _, attrs in parser.tags for a, _ in attrs}
    assert attrs <= ALLOWED_ATTRS, attrs - ALLOWED_ATTRS
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    assert "near mean" in page and "OpenOOD v1.5 published rows" in page  # the grouped sections were written
    for tag, attrs in parser.tags:
        for a, v in attrs:
            if a in ("src", "href"):
                assert v.startswith(("data:image/png;base64,", "#")), (tag, a, v)


def test_report_files_named_from_user_strings_stay_in_the_run_folder(page_with_payloads):
    """Issue: ood.folder.name=../../../../TRAV wrote TRAV.png outside the run folder; a "/" made sub-folders."""
    tmp_path, run, _ = page_with_payloads
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.parent in (run, tmp_path / "figs") for p in written), [str(p) for p in written
                                                                         if p.parent not in (run, tmp_path / "figs")]
    assert any(p.name.startswith("roc_") for p in written) and any(p.name.startswith("hist_") for p in written)


def test_results_tables_neutralise_set_and_detector_names(tmp_path):
    """results.csv cells of set/detector names follow the same OWASP rule; Markdown and terminal tables hold
    one printable line per row (a newline, `|` or terminal escape in a name cannot break or forge them)."""
    from c2ir import report

    oods = ["=HYPERLINK(\"x\")", "a|b", "esc\x1b[31mred"]
    result = _result(oods, ["msp", "@det"])
    result["id_set"] = "id\nforged row"
    report.write_reports(tmp_path, result)
    with open(tmp_path / "results.csv", newline="") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], cells
    for text in (report.markdown(result), report.terminal_table(result)):
        assert "\x1b" not in text and not [line for line in text.splitlines() if line.startswith("forged row")]
        assert "a|b" not in text and "a\\|b" in text


def test_openood_csv_export_neutralises_set_and_detector_names(tmp_path):
    """The OpenOOD export (issue 23b) follows the rule of every other CSV: a detector name cannot leave the export
    folder or make sub-folders, and a set name cannot become a formula or split a row; both stay recoverable."""
    from c2ir.names import csv_uncell
    from c2ir.openood_export import write_openood_csvs

    oods = ["=HYPERLINK(\"x\")", "near\nforged,row", "@far", "-1+2"]
    dets = ["../../../../TRAV", "a/b", "msp"]
    result = _result(oods, dets)
    result["id_set"] = "id"
    rng = np.random.default_rng(0)
    scores = {d: {s: rng.normal(size=30) for s in ["id", *oods]} for d in dets}
    out = tmp_path / "run" / "openood"
    written = write_openood_csvs(out, result, scores)
    assert len(written) == 3 and all(p.parent == out for p in written)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted([*(p.name for p in written), "README.txt"])
    assert (out / "msp.csv") in written  # a safe name is kept as it is
    for path in written:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        index = [r[0] for r in rows[1:]]
        assert len(rows) == 1 + len(oods) + 2, rows  # one row per set + nearood + farood: no forged row
        assert not [c for c in index if c.startswith(("=", "+", "-", "@", "\t", "\r"))], index
        assert sorted(csv_uncell(c) for c in index if c not in ("nearood", "farood")) == sorted(oods)
    readme = (out / "README.txt").read_text()
    assert f"Not computable (no metric reported): {PAYLOADS[2]}" in readme  # names the detector without a file


def test_an_error_naming_a_path_with_a_newline_is_still_one_line(tmp_path, capsys, monkeypatch):
    """C2IRError lines quote user paths: a newline in one cannot split the error or forge a second line."""
    from c2ir import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert cli.main(["evaluate", f"model.checkpoint='{tmp_path}/x\nc2ir: error: FORGED.pt'"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("c2ir: error: checkpoint not found") and "\\x0a" in err[0], err
