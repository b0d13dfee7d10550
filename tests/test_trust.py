"""Issue 11: no silent wrong answer, and one line for every bad input (fast, in-process where possible)."""

from __future__ import annotations

import json
import os
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from c2ir import cli
from c2ir.errors import C2IRError
from conftest import make_cfg, run_cli


# ----- one line, exit 2, for bad config values ---------------------------------------------------
BAD_VALUES = [
    (["synth.iterations=abc"], "synth.iterations='abc'"),
    (["synth.iterations=-5"], "synth.iterations=-5"),
    (["synth.iterations=0"], "synth.iterations=0"),
    (["synth.per_class=0"], "synth.per_class=0"),
    (["synth.batch_size=0"], "synth.batch_size=0"),
    (["synth.lr=nan"], "synth.lr=nan"),
    (["synth.betas=[0.5]"], "synth.betas=[0.5]"),
    (["synth.betas=[1.0,0.9]"], "synth.betas[0]=1.0"),   # Adam divides by 1 - beta^t: was a ZeroDivisionError
    (["seed=99999999999999999999"], "seed=99999999999999999999"),
    (["cache_root=/tmp/c2ir-ü"], "cache_root='...'"),   # Hydra's lexer error: now says to quote the value
    (["ipm=[mean_l2,mmd_rbf"], "cannot parse 'ipm=[mean_l2,mmd_rbf' (no viable alternative"),   # names the override
    (["data.root='/tmp/x"], "a quote is not closed"),
    (["cache_root=/tmp/my", "dir"], "the shell split it there: quote the whole override"),   # an unquoted space
    (["train.finetune=true"], "train.finetune=true needs weights to start from"),   # trained from scratch silently
    (["train.pad=100"], "train.pad=100 is not smaller than the 8x8 input"),
    (["model.checkpoint=/tmp"], "model.checkpoint=/tmp is a folder"),   # was torch's "Overflow when unpacking long long"
    (["threads=-2"], "threads=-2"),
    (["batch_size=0"], "batch_size=0"),
    (["evaluate.max_train_samples=-1"], "evaluate.max_train_samples=-1"),
    (["data.max_test_samples=-4"], "data.max_test_samples=-4"),
    (["ood.gaussian_noise.max_samples=-1"], "ood.gaussian_noise.max_samples=-1"),
    (["synth.iterationz=3"], "synth.iterationz"),
    (["+synth.iterationz=3"], "synth.iterationz"),
    (["ood=[]"], "ood=[]"),
    (["detectors=[]"], "detectors=[]"),
    (["cache_root="], "cache_root=''"),
    (["cache_root=null"], "cache_root=None"),
    (["cache_root=/proc/c2ir-no-such/cache"], "cache_root=/proc/c2ir-no-such/cache"),
    (["train.epochs=0"], "train.epochs=0"),
    (["ood=[gaussian_noise,gaussian_noise]"], "gaussian_noise more than once"),
    (["ipm=[mean_l2,mmd_rbf]"], "ipm takes one option, not a list"),   # Hydra kept the last entry silently
    (["synth=[paper,default]"], "-m synth=paper,default"),
    (["-m", "ood=[gaussian_noise],[nope]"], "unknown ood 'nope'"),     # Hydra's list-sweep form, read as Hydra reads it
    (["-m", "seed=0,-1"], "seed=-1"),  # every value of a sweep is checked before the first job
    (["detectors.c2ir.combination=max"], "++detectors.c2ir.combination="),   # a valid parameter missing its ++
    (["hydra.run.dir=/x_${nope}"], "hydra.run.dir"),   # an interpolation that cannot resolve
]


@pytest.mark.parametrize("overrides,needle", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_config_values_get_one_line(overrides, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    extra = [] if any(o.startswith("cache_root") for o in overrides) else [f"cache_root={tmp_path / 'c'}"]
    assert cli.main(["synthesize", *overrides, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("c2ir: error: ") and needle in err[0], err
    assert "Traceback" not in err[0]


def test_cache_root_that_is_a_file_or_read_only(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    assert cli.main(["synthesize", f"cache_root={tmp_path / 'f'}"]) == 2
    assert "is a file" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: use a read-only file system instead
            target = "/proc/self/c2ir-cache"
        else:
            target = str(ro / "cache")
        assert cli.main(["synthesize", f"cache_root={target}"]) == 2
        assert "not a writable folder" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_empty_cache_root_does_not_write_into_the_cwd(tmp_path, monkeypatch):
    from c2ir.stages.job import cli_job

    monkeypatch.chdir(tmp_path)
    with pytest.raises(C2IRError, match="cache_root"):
        cli_job(make_cfg(tmp_path, ["cache_root="]))
    assert not any(tmp_path.iterdir())


def test_hydra_flags_work_in_any_position(tmp_path):
    assert cli.split_flags(["model=resnet56", "--cfg", "job", "seed=2"]) == (["--cfg", "job"], ["model=resnet56", "seed=2"])
    assert cli.split_flags(["-m", "seed=0,1", "--info", "defaults"]) == (["-m", "--info", "defaults"], ["seed=0,1"])
    proc = run_cli(["run", "model=resnet56", "data=cifar10", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "name: resnet56" in proc.stdout


def test_run_directories_are_unique_per_process(tmp_path):
    """Two runs started together get their own folders, each with its own overrides."""
    import subprocess
    import sys

    env = {**os.environ}
    env.pop("HYDRA_FULL_ERROR", None)
    # `train` with a checkpoint and no finetune stops right after Hydra made the run folder: fast
    import torch

    torch.save({}, tmp_path / "x.pt")  # exists and is a torch.save file: anything else is refused before Hydra starts
    procs = [subprocess.Popen([sys.executable, "-m", "c2ir", "train", f"seed={s}", f"model.checkpoint={tmp_path}/x.pt",
                               f"cache_root={tmp_path / 'c'}"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for s in (1, 2)]
    for p in procs:
        p.wait(timeout=300)
    overrides = sorted((tmp_path / "outputs" / "runs").rglob("overrides.yaml"))
    assert len(overrides) == 2, overrides
    # unique by construction, not by timing: each folder carries its process id
    assert sorted(o.parent.parent.name.rsplit("_p", 1)[-1] for o in overrides) == sorted(str(p.pid) for p in procs)
    assert {next(l for l in o.read_text().splitlines() if "seed=" in l).strip("- ") for o in overrides} == {"seed=1", "seed=2"}


# ----- configuration combinations -----------------------------------------------------------------
def test_any_ood_list_works_on_top_of_an_experiment(tmp_path):
    from c2ir.validation import validate

    cfg = make_cfg(tmp_path, ["experiment=cifar10_resnet20_cpu", "ood=[folder]", f"ood.folder.root={tmp_path}",
                              "model.checkpoint=null", "stage=synthesize"])
    assert list(validate(cfg).ood) == ["folder"]  # the experiment's max_samples for unselected sets are dropped
    cfg = make_cfg(tmp_path, ["experiment=cifar10_resnet20_cpu", "ood=[tin_resize,gaussian_noise]", "model.checkpoint=null"])
    assert validate(cfg).ood.tin_resize.max_samples == 3000  # kept for a selected set


def test_several_named_folder_sets_in_one_run(tmp_path):
    from c2ir.validation import ood_names, validate

    cfg = make_cfg(tmp_path, ["ood=[folder]", f"ood.folder.root={tmp_path}", "ood.folder.name=textures"])
    assert ood_names(validate(cfg)) == {"folder": "textures"}
    cfg = make_cfg(tmp_path, ["ood=[]", f"+ood.textures={{source:folder,root:{tmp_path}}}",
                              f"+ood.faces={{source:folder,root:{tmp_path}}}"])
    assert ood_names(validate(cfg)) == {"textures": "textures", "faces": "faces"}
    cfg = make_cfg(tmp_path, ["ood=[folder,gaussian_noise]", f"ood.folder.root={tmp_path}", "ood.folder.name=gaussian_noise"])
    with pytest.raises(C2IRError, match="both named 'gaussian_noise'"):
        validate(cfg)


# ----- data -----------------------------------------------------------------------------------------
def _images(folder: Path, n: int, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_folder_sets_are_keyed_by_content(tmp_path):
    """Deleting images from a folder OOD set changes its features key (was: keyed by path, stale count)."""
    from c2ir.graph import key_of
    from c2ir.stages.features import FEATURES, Pass
    from c2ir.stages.job import cli_job

    _images(tmp_path / "ood", 12)
    over = ["ood=[folder]", f"ood.folder.root={tmp_path / 'ood'}"]
    before = key_of(FEATURES, cli_job(make_cfg(tmp_path, over)), Pass("ood:folder"))
    for p in sorted((tmp_path / "ood").iterdir())[:9]:
        p.unlink()
    assert key_of(FEATURES, cli_job(make_cfg(tmp_path, over)), Pass("ood:folder")) != before


def test_imagefolder_id_data_is_keyed_by_content(tmp_path):
    from c2ir.stages.features import dataset_spec
    from c2ir.stages.job import cli_job

    for split in ("train", "test"):
        for c in range(2):
            _images(tmp_path / "ds" / split / f"c{c}", 3)
    over = ["data=imagefolder", f"data.root={tmp_path / 'ds'}", "data.num_classes=2", "data.channels=1", "data.mean=[0.5]", "data.std=[0.25]",
            "model.num_classes=2"]
    before = dataset_spec(cli_job(make_cfg(tmp_path, over)), "id_test")
    (tmp_path / "ds" / "test" / "c0" / "000.png").unlink()
    assert dataset_spec(cli_job(make_cfg(tmp_path, over)), "id_test") != before


def test_16bit_png_decodes_to_its_grey_level(tmp_path):
    from c2ir.data.folders import decode

    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(tmp_path / "g16.png")
    for channels in (1, 3):
        arr = decode(tmp_path / "g16.png", 8, channels, "resize", 0)
        assert abs(float(arr.mean()) - 128) <= 1, arr.mean()  # was 255: clipped to white


def _bomb_png(path: Path, w: int = 20000, h: int = 20000) -> None:
    """A tiny PNG file whose header claims w x h pixels."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (w + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb_is_skipped_and_counted(tmp_path):
    from c2ir.data.folders import load_flat_folder

    _images(tmp_path / "ood", 3)
    _bomb_png(tmp_path / "ood" / "bomb.png")
    from c2ir.data import materialize

    ds = materialize(load_flat_folder(tmp_path / "ood", "bombs", 8, 1, "resize", None, 0), num_workers=2)
    assert len(ds) == 3 and ds.skipped == 1


def test_train_and_test_class_names_must_match(tmp_path):
    from c2ir.data import load_id

    for split, names in (("train", ["cat", "dog"]), ("test", ["cat", "dgo"])):
        for c in names:
            _images(tmp_path / "ds" / split / c, 2)
    cfg = make_cfg(tmp_path, ["data=imagefolder", f"data.root={tmp_path / 'ds'}", "data.num_classes=2"])
    with pytest.raises(C2IRError, match="class folders differ.*dog.*dgo"):
        load_id(cfg.data, "test")


@pytest.mark.parametrize("damage", ["not_gzip", "truncated", "outside"])
def test_bad_shared_archives_are_one_line(tmp_path, monkeypatch, damage):
    from c2ir.data.shared import ensure_extracted

    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    monkeypatch.setenv("C2IR_SHARED_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("C2IR_SHARED_CACHE", str(tmp_path / "extract"))
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(200_000))
    archive = shared / "x.tar.gz"
    if damage == "not_gzip":
        archive.write_bytes(b"this is not a gzip file" * 10)
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(src, arcname="../evil.bin" if damage == "outside" else "x/payload.bin")
        if damage == "truncated":
            archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    (tmp_path / "extract").mkdir()
    (tmp_path / "extract" / ".tmp-x-deadbeef").mkdir()  # left by a killed extraction
    with pytest.raises(C2IRError, match="cannot be extracted"):
        ensure_extracted("x.tar.gz")
    assert not (tmp_path / "evil.bin").exists()
    assert not list((tmp_path / "extract").glob(".tmp-*"))


# ----- damaged cache states and checkpoints --------------------------------------------------------
def _checkpoint_job(tmp_path, overrides=(), damage=None):
    from c2ir.models import build_model
    from c2ir.stages.job import cli_job

    cfg = make_cfg(tmp_path, ["ood=[gaussian_noise]"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    state = model.state_dict()
    if damage == "nan":
        state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "ck.pt")
    return cli_job(make_cfg(tmp_path, ["ood=[gaussian_noise]", f"model.checkpoint={tmp_path / 'ck.pt'}", *overrides]))


def test_non_finite_checkpoint_names_the_checkpoint(tmp_path):
    from c2ir.stages.train import classifier

    job = _checkpoint_job(tmp_path, damage="nan")
    with pytest.raises(C2IRError) as err:
        classifier(job)
    assert "non-finite" in str(err.value) and "ck.pt" in str(err.value) and "synth.lr" not in str(err.value)


def test_zero_byte_partial_batch_is_recomputed(tmp_path, caplog):
    from safetensors.torch import load_file

    from c2ir.graph import key_of, resolve
    from c2ir.stages.synthesize import SYNTHESIZE, _batch_path

    job = _checkpoint_job(tmp_path, ["synth.iterations=2", "synth.per_class=2", "synth.batch_size=10"])
    work = job.store.partial_dir("synthesize", key_of(SYNTHESIZE, job))
    work.mkdir(parents=True)
    _batch_path(work, 0).write_bytes(b"")   # a batch file a crash left empty: recomputed, not read
    impressions = resolve(SYNTHESIZE, job).value
    assert len(impressions.images) == 20 and "damaged batch file" in caplog.text
    assert not work.exists()  # the partial folder is removed once the artifact is published


def test_train_prints_no_requires_grad_warning(tmp_path):
    from c2ir.stages.job import cli_job
    from c2ir.stages.train import train_model

    job = cli_job(make_cfg(tmp_path, ["train.epochs=1", "data.max_train_samples=64"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_model(job, tmp_path / "work")
    assert not [w for w in caught if "requires_grad" in str(w.message)]


def test_damaged_train_resume_state_restarts(tmp_path, caplog):
    from c2ir.stages.job import cli_job
    from c2ir.stages.train import train_model

    job = cli_job(make_cfg(tmp_path, ["train.epochs=1", "data.max_train_samples=64"]))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "epoch_0000.safetensors").write_bytes(b"")
    _, history = train_model(job, tmp_path / "work")
    assert len(history) == 1 and "damaged resume state" in caplog.text


# ----- report ---------------------------------------------------------------------------------------
def test_report_skips_a_corrupt_results_json(tmp_path, caplog):
    from c2ir.report import aggregate

    good = {"id_set": "x", "id_accuracy": 1.0, "ood_sets": ["n"], "access": {"msp": "data-free"},
            "metrics": {"msp": {"n": {"fpr95": 10.0, "auroc": 90.0, "aupr_in": 1.0, "aupr_out": 1.0, "detection_acc": 1.0}}}}
    for i, text in enumerate([json.dumps(good), "{not json", json.dumps([1, 2]), json.dumps({"metrics": 3})]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(text)
    text, table = aggregate(tmp_path)
    assert len(table) == 1 and table[0]["auroc_mean"] == 90.0
    assert "3 unreadable results.json skipped" in text and caplog.text.count("report: skipping") == 3


def _probe_many(root: str) -> list[str]:
    from c2ir.validation import writable_problem

    return [r for _ in range(150) if (r := writable_problem(Path(root) / "cache" / "sub", keep=False))]


def test_concurrent_cache_root_probes_never_report_a_writable_folder_as_unwritable(tmp_path):
    """torchrun ranks and sweep jobs check one fresh cache_root at once; one process's probe removes the folder it
    made while another is about to write its probe file there: that must be retried, not reported."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    with mp.get_context("fork").Pool(4) as pool:
        problems = [p for res in pool.map(_probe_many, [str(tmp_path)] * 4) for p in res]
    assert problems == []


@pytest.mark.parametrize("overrides", [["-m", "detectors=[msp],[energy]"], ["ipm=[mean_l2]"],
                                       ["-m", "experiment=null,cifar10_resnet20_cpu"], ["-m", "detectors=choice([msp],[energy])"],
                                       ["+ood=[gaussian_noise]"], ["ipm=null"]])
def test_valid_group_override_forms_pass_the_check(overrides):
    """Hydra's own forms (list sweeps, a one-element list for a one-option group, a null in a sweep) are read as Hydra
    reads them, not refused (the check used to split on commas: 'unknown detectors msp]')."""
    from c2ir.cli import validate_overrides

    validate_overrides([o for o in overrides if o != "-m"], compose_all=False, multirun="-m" in overrides)
