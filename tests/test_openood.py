"""OpenOOD v1.5's benchmark protocol end to end (issue 23): a tiny data folder in OpenOOD's exact layout
(`benchmark_imglist/cifar10/*.txt` + `images_classic/`), `c2ir run experiment=openood_cifar10` through the CLI with a
random-weight checkpoint of OpenOOD's ResNet18_32x32 layout, and its near/far rows, both FPR95 conventions and the
OpenOOD CSV export checked against scikit-learn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from conftest import assert_self_contained, make_cfg, run_cli

NEAR, FAR = ["cifar100", "tin"], ["mnist", "svhn", "texture", "places365"]
CLASSES = 4  # shrunk from 10 (data.num_classes=4): the checkpoint's head has 4 outputs
# OOD sets: (images, image size (H, W), grey?) -- MNIST is 28x28 grey, Textures larger and not square
OOD_SHAPES = {"cifar100": (5, (32, 32), False), "tin": (4, (32, 32), False), "mnist": (4, (28, 28), True),
              "svhn": (6, (32, 32), False), "texture": (3, (45, 60), False), "places365": (4, (32, 32), False)}


def openood_fixture(root: Path, per_class: int = 3) -> Path:
    """`root` as OpenOOD's data folder: lists under benchmark_imglist/cifar10/, images under images_classic/."""
    rng = np.random.default_rng(0)
    lists = root / "benchmark_imglist" / "cifar10"
    lists.mkdir(parents=True)

    def write(set_name: str, split: str, entries: list[tuple[str, int]]):
        (lists / f"{split}_{set_name}.txt").write_text("".join(f"{p} {label}\n" for p, label in entries))

    def image(rel: str, shape: tuple[int, int], grey: bool = False) -> str:
        path = root / "images_classic" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, shape if grey else (*shape, 3), dtype=np.uint8)).save(path)
        return rel

    for split in ("train", "test"):
        write("cifar10", split, [(image(f"cifar10/{split}/c{k}/{i}.png", (32, 32)), k)
                                 for k in range(CLASSES) for i in range(per_class)])
    for name, (n, shape, grey) in OOD_SHAPES.items():
        write(name, "test", [(image(f"{name}/test/{i}.png", shape, grey), -1) for i in range(n)])
    return root


def openood_layout_checkpoint(path: Path, classes: int = CLASSES) -> Path:
    """Random weights in exactly the state-dict layout of OpenOOD's ResNet18_32x32 (keys written out here from
    openood/networks/resnet18_32x32.py, not taken from c2ir's model), saved like OpenOOD's best.ckpt."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    def bn(name, c):
        state.update({f"{name}.weight": 1 + 0.1 * torch.randn(c, generator=g), f"{name}.bias": 0.1 * torch.randn(c, generator=g),
                      f"{name}.running_mean": 0.1 * torch.randn(c, generator=g),
                      f"{name}.running_var": 1 + 0.1 * torch.rand(c, generator=g),
                      f"{name}.num_batches_tracked": torch.tensor(100)})

    conv("conv1", 64, 3, 3)
    bn("bn1", 64)
    cin = 64
    for stage, planes in enumerate((64, 128, 256, 512), 1):
        for b in range(2):
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1", planes, cin if b == 0 else planes, 3)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            if b == 0 and cin != planes:
                conv(f"{p}.shortcut.0", planes, cin, 1)
                bn(f"{p}.shortcut.1", planes)
        cin = planes
    state["fc.weight"] = torch.randn(classes, 512, generator=g) * 0.05
    state["fc.bias"] = torch.zeros(classes)
    torch.save(state, path)
    return path


def _sk_fpr95_id_positive(id_s, ood_s):
    fpr, tpr, _ = roc_curve(np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], -np.r_[id_s, ood_s])
    return 100 * fpr[np.searchsorted(tpr, 0.95, side="left")]


def _sk_openood(id_s, ood_s):
    """OpenOOD v1.5's auc_and_fpr_recall with conf = -score (openood/evaluators/metrics.py)."""
    conf = -np.r_[id_s, ood_s]
    ood = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
    fpr, tpr, _ = roc_curve(ood, -conf)
    p_in, r_in, _ = precision_recall_curve(1 - ood, conf)
    p_out, r_out, _ = precision_recall_curve(ood, -conf)
    return {"FPR@95": 100 * fpr[np.argmax(tpr >= 0.95)], "AUROC": 100 * auc(fpr, tpr),
            "AUPR_IN": 100 * auc(r_in, p_in), "AUPR_OUT": 100 * auc(r_out, p_out)}


DETECTORS = ["msp", "energy", "c2ir", "knn"]  # knn: full access, reads the train list


def _args(root: Path, ckpt: Path, cache: Path, *extra: str) -> list[str]:
    return ["run", "experiment=openood_cifar10", f"paths.data_root={root}", f"model.checkpoint={ckpt}",
            f"data.num_classes={CLASSES}", f"detectors=[{','.join(DETECTORS)}]", "synth.per_class=4",
            "synth.batch_size=16", "synth.iterations=2", "synth.warmup_iterations=2", "evaluate.max_train_samples=8", "batch_size=64",
            "num_workers=0", "++detectors.knn.k=5", f"cache_root={cache}", *extra]  # k <= the 8 train images


@pytest.fixture(scope="module")
def openood_runs(tmp_path_factory):
    """Two CLI runs on the fixture: the default FPR95 convention (ID positive), then OpenOOD's (OOD positive)."""
    tmp = tmp_path_factory.mktemp("openood")
    root, ckpt = openood_fixture(tmp / "data"), openood_layout_checkpoint(tmp / "best.ckpt")
    runs = {}
    for positive in ("id", "ood"):
        (tmp / positive).mkdir()
        figures = "report.figures=true" if positive == "id" else "report.figures=false"  # one page suffices
        proc = run_cli(_args(root, ckpt, tmp / "cache", f"metrics.fpr_positive={positive}", figures), cwd=tmp / positive)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = next((tmp / positive / "outputs" / "runs").rglob("results.json")).parent
        runs[positive] = (proc, run_dir)
    cache = tmp / "cache"
    scores = load_file(str(next((cache / "evaluate").rglob("scores.safetensors"))))
    return runs, {k: v.numpy().astype(np.float64) for k, v in scores.items()}


def test_fixture_run_has_openood_sets_groups_and_near_far_rows(openood_runs):
    runs, _ = openood_runs
    proc, run_dir = runs["id"]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["id_set"] == "cifar10-test" and res["ood_sets"] == NEAR + FAR
    assert res["counts"] == {"cifar10-test": CLASSES * 3, **{k: v[0] for k, v in OOD_SHAPES.items()}}
    assert res["groups"] == {**{s: "near" for s in NEAR}, **{s: "far" for s in FAR}}
    for det in DETECTORS:
        rows = {r["ood"]: r for r in res["rows"] if r["detector"] == det}
        for group, sets in (("near", NEAR), ("far", FAR)):  # unweighted over the sets, as OpenOOD
            for metric in ("auroc", "fpr95", "aupr_in"):
                want = np.mean([res["metrics"][det][s][metric] for s in sets])
                assert rows[f"{group} mean"][metric] == pytest.approx(want)
    assert "near mean AUROC / FPR95 (ID+)" in proc.stdout and "far mean AUROC / FPR95 (ID+)" in proc.stdout
    with (run_dir / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert "fpr95_id_positive" in table[0] and {"near mean", "far mean"} <= {r["ood"] for r in table}


def test_both_fpr_conventions_match_sklearn(openood_runs):
    runs, scores = openood_runs
    res = {p: json.loads((d / "results.json").read_text()) for p, (_, d) in runs.items()}
    assert res["id"]["fpr_positive"] == "id" and res["ood"]["fpr_positive"] == "ood"
    assert "FPR95 (OOD+)" in runs["ood"][0].stdout and "fpr95_ood_positive" in (runs["ood"][1] / "results.csv").read_text()
    differ = 0
    for det in DETECTORS:
        id_s = scores[f"{det}/cifar10-test"]
        for ood in NEAR + FAR:
            ood_s = scores[f"{det}/{ood}"]
            assert res["id"]["metrics"][det][ood]["fpr95"] == pytest.approx(_sk_fpr95_id_positive(id_s, ood_s))
            assert res["ood"]["metrics"][det][ood]["fpr95"] == pytest.approx(_sk_openood(id_s, ood_s)["FPR@95"])
            assert res["ood"]["metrics"][det][ood]["auroc"] == res["id"]["metrics"][det][ood]["auroc"]
            differ += res["id"]["metrics"][det][ood]["fpr95"] != res["ood"]["metrics"][det][ood]["fpr95"]
    assert differ, "the two conventions gave the same FPR95 everywhere: the test cannot tell them apart"


def test_openood_csv_export_has_openood_layout_and_values(openood_runs):
    runs, scores = openood_runs
    for positive in ("id", "ood"):  # OpenOOD's convention whatever metrics.fpr_positive says
        run_dir = runs[positive][1]
        res = json.loads((run_dir / "results.json").read_text())
        assert "OOD as the positive class" in (run_dir / "openood" / "README.txt").read_text()
        for det in DETECTORS:
            with (run_dir / "openood" / f"{det}.csv").open() as f:
                rows = list(csv.reader(f))
            assert rows[0] == ["", "FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]
            table = {r[0]: dict(zip(rows[0][1:], map(float, r[1:]))) for r in rows[1:]}
            assert [r[0] for r in rows[1:]] == [*NEAR, "nearood", *FAR, "farood"]
            for ood in NEAR + FAR:
                want = _sk_openood(scores[f"{det}/cifar10-test"], scores[f"{det}/{ood}"])
                for col, v in want.items():
                    assert table[ood][col] == pytest.approx(v, abs=1e-4), (det, ood, col)
                assert table[ood]["ACC"] == pytest.approx(100 * res["id_accuracy"], abs=1e-4)
            for mean_row, sets in (("nearood", NEAR), ("farood", FAR)):
                for col in ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT"):
                    assert table[mean_row][col] == pytest.approx(np.mean([table[s][col] for s in sets]), abs=1e-3)


def test_report_page_answers_first_and_shows_published_rows_apart(openood_runs):
    runs, _ = openood_runs
    page = (runs["id"][1] / "report.html").read_text()
    assert_self_contained(page)
    assert page.index('alt="summary"') < page.index('id="results"')  # the summary figure before the tables
    assert "published, ResNet-18, not this model" in page
    assert ">NAC</td><td>90.93 ± 0.23</td><td>94.60 ± 0.49</td>" in page
    assert ">KNN</td><td>90.64 ± 0.20</td><td>92.96 ± 0.14</td>" in page
    assert page.index("measured, this run") < page.index("published, ResNet-18")
    assert "near mean</th>" in page and "far mean</th>" in page and "FPR95 (ID+)" in page


def test_second_convention_reruns_only_evaluate(openood_runs):
    runs, _ = openood_runs
    import re

    log = runs["ood"][0].stdout + runs["ood"][0].stderr
    assert re.findall(r"cache miss: computing (\w+)/", log) == ["evaluate"]


def test_missing_list_or_image_is_one_line_naming_the_layout(tmp_path):
    root, ckpt = openood_fixture(tmp_path / "data", per_class=1), openood_layout_checkpoint(tmp_path / "best.ckpt")
    (root / "images_classic" / "tin" / "test" / "2.png").unlink()
    proc = run_cli(_args(root, ckpt, tmp_path / "cache"), cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("c2ir: error: tin: 1 of 4 images listed in ")
    assert "tin/test/2.png" in err[0] and "benchmark_imglist/<benchmark>/<split>_<set>.txt" in err[0]
    assert "paths.data_root or ood.tin.root" in err[0]
    (root / "benchmark_imglist" / "cifar10" / "test_cifar10.txt").unlink()
    proc = run_cli(_args(root, ckpt, tmp_path / "cache"), cwd=tmp_path)
    assert proc.returncode == 2 and "cifar10-test: image list not found" in proc.stderr
    assert not (tmp_path / "cache" / "synthesize").exists()  # reported before anything ran


def test_experiments_compose_with_openood_splits_and_preprocessing(tmp_path):
    c10 = make_cfg(tmp_path, ["experiment=openood_cifar10", "model.checkpoint=x"])
    assert (c10.data.resize, list(c10.model.mean), list(c10.model.std)) == (
        "short_side_center_crop", [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    assert {k: c10.ood[k].group for k in c10.ood} == {**{s: "near" for s in NEAR}, **{s: "far" for s in FAR}}
    assert c10.model.head == "fc" and c10.report.published == "openood_cifar10"
    c100 = make_cfg(tmp_path, ["experiment=openood_cifar100", "model.checkpoint=x"])
    assert list(c100.ood) == ["cifar10", "tin", *FAR] and c100.data.num_classes == 100
    assert str(c100.ood.tin.imglist) == "benchmark_imglist/cifar100/test_tin.txt"
    for bench, folder in (("imagenet200", "imagenet200"), ("imagenet1k", "imagenet")):
        cfg = make_cfg(tmp_path, [f"experiment=openood_{bench}", "model.checkpoint=x"])
        assert list(cfg.ood) == ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"]
        assert [cfg.ood[k].group for k in cfg.ood] == ["near", "near", "far", "far", "far"]
        assert cfg.ood.textures.data_dir == "images_classic" and cfg.ood.ninco.data_dir == "images_largescale"
        assert str(cfg.ood.ninco.imglist) == f"benchmark_imglist/{folder}/test_ninco.txt"
        assert cfg.data.resize == "resize_center_crop" and cfg.data.image_size == 224


def test_published_table_is_cited_and_holds_the_issue_rows():
    from c2ir import published

    assert published.benchmarks() == ["openood_cifar10", "openood_cifar100", "openood_imagenet1k", "openood_imagenet200"]
    for bench, where in published.commits().items():
        assert bench in published.benchmarks() and " at commit " in where and where.startswith("results/")
    rows = {r.method: r for r in published.rows("openood_cifar10")}
    quoted = {"NAC": (90.93, 94.60), "KNN": (90.64, 92.96), "WeiPer+KLD": (90.54, 93.12), "fDBD": (90.42, 93.16),
              "VIM": (88.68, 93.48), "GEN": (88.20, 91.35), "EBO": (87.58, 91.21)}  # issue 23's table (EBO = Energy)
    assert {m: (rows[m].near_auroc, rows[m].far_auroc) for m in quoted} == quoted
    assert {r.arch for r in rows.values()} == {"ResNet18"}
    assert {r.arch for r in published.rows("openood_imagenet1k")} == {"ResNet50"}
    assert published.rows("no_such_benchmark") == []


def test_runs_without_groups_have_no_group_rows():
    from c2ir import report

    m = {"fpr95": 10.0, "auroc": 90.0, "aupr_in": 1.0, "aupr_out": 1.0, "detection_acc": 1.0}
    result = {"id_set": "x-test", "id_accuracy": 1.0, "ood_sets": ["a", "b"], "metrics": {"msp": {"a": m, "b": m}}}
    assert [r["ood"] for r in report.rows(result)] == ["a", "b", "mean"]
    assert "near mean" not in report.summary_table(result)
    grouped = {**result, "groups": {"a": "near", "b": "far"}}
    assert [r["ood"] for r in report.rows(grouped)] == ["a", "b", "mean", "near mean", "far mean"]
