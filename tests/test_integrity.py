"""Issue 24: every byte that is reused is verified, what changed is re-extracted, cache housekeeping.

Fast, in-process where possible (tiny checkpoint model, 1-2 synthesis iterations, hand-made artifacts)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from c2ir.cache import ArtifactStore, file_sha256
from c2ir.errors import C2IRError
from conftest import make_cfg
from test_cache import _build


def _flip_last_bytes(path: Path, n: int = 3) -> None:
    """Same size, other bytes (the end of a safetensors file is tensor data, not its header)."""
    data = bytearray(path.read_bytes())
    for i in range(1, n + 1):
        data[-i] ^= 0xFF
    path.write_bytes(bytes(data))


def _rewrite_manifest(art_path: Path, edit) -> None:
    m = json.loads((art_path / "manifest.json").read_text())
    edit(m["files"])
    (art_path / "manifest.json").write_text(json.dumps(m))


# ----- manifests list every file, inside the folder, in a readable format -------------------------
@pytest.mark.parametrize("damage", ["empty_table", "unlisted_file", "outside_relative", "outside_absolute",
                                    "planted_pickle"])
def test_manifest_must_list_every_file_inside_the_folder(tmp_path, damage, caplog):
    store = ArtifactStore(tmp_path / "cache")
    art = store.get_or_create("s", "k", _build("one"), config={})
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret bytes outside the cache")
    entry = {"size": outside.stat().st_size, "sha256": file_sha256(outside)}
    if damage == "empty_table":  # issue: an empty table verified nothing and damaged features were served
        _rewrite_manifest(art.path, lambda files: files.clear())
        _flip_last_bytes(art.path / "t.safetensors")
    elif damage == "unlisted_file":
        _rewrite_manifest(art.path, lambda files: files.pop("t.safetensors"))
    elif damage == "outside_relative":
        _rewrite_manifest(art.path, lambda files: files.update({"../../../outside.bin": entry}))
    elif damage == "outside_absolute":
        _rewrite_manifest(art.path, lambda files: files.update({str(outside): entry}))
    else:  # a pickle planted as the tensor file, its hash and size written into the manifest
        import pickle

        (art.path / "t.safetensors").write_bytes(pickle.dumps({"x": 1}))
        f = art.path / "t.safetensors"
        _rewrite_manifest(art.path, lambda files: files.update(
            {"t.safetensors": {"size": f.stat().st_size, "sha256": file_sha256(f)}}))
    again = store.get_or_create("s", "k", _build("two"), config={})
    assert again.manifest["tag"] == "two" and "discarding and recomputing" in caplog.text
    assert torch.equal(again.tensors("t.safetensors")["x"], torch.arange(10))
    assert outside.read_bytes() == b"secret bytes outside the cache"


# ----- resumable work: partial synthesis batches and training epochs ------------------------------
def _checkpoint_cfg(tmp_path, overrides=()):
    from c2ir.models import build_model

    cfg = make_cfg(tmp_path)
    torch.manual_seed(0)
    torch.save(build_model(cfg.model).state_dict(), tmp_path / "ck.pt")
    return make_cfg(tmp_path, ["ood=[gaussian_noise]", f"model.checkpoint={tmp_path / 'ck.pt'}",
                               "synth.iterations=2", "synth.per_class=2", "synth.batch_size=10", *overrides])


def _synthesis_step(job):
    """The synthesize node's build step of `job`, with its partial folder (the batches outside a build)."""
    from c2ir.graph import Step, key_of
    from c2ir.stages.synthesize import SYNTHESIZE

    key = key_of(SYNTHESIZE, job)
    return Step(job, SYNTHESIZE, None, key, {}, {}, work=job.store.partial_dir("synthesize", key))


def _rewrite_batch(path: Path, change) -> None:
    from safetensors.torch import load_file

    t = load_file(str(path))
    change(t)
    save_file(t, str(path))


@pytest.mark.parametrize("damage", ["flipped_image_bytes", "targets_rewritten", "not_safetensors", "no_hash"])
def test_damaged_partial_batch_is_discarded_and_recomputed(tmp_path, damage, caplog):
    """Issue: a batch with flipped bytes was assembled into the impressions (75.5% on target instead of
    100%) and cached as good; one with damaged labels made every later run fail."""
    from c2ir.graph import resolve
    from c2ir.stages.job import cli_job
    from c2ir.stages.synthesize import SYNTHESIZE, _batch_path, compute_batches

    cfg = _checkpoint_cfg(tmp_path)
    step = _synthesis_step(cli_job(cfg))
    compute_batches(step)
    first = _batch_path(step.work, 0)
    fresh = first.read_bytes()
    if damage == "flipped_image_bytes":
        _flip_last_bytes(first)
    elif damage == "targets_rewritten":
        _rewrite_batch(first, lambda t: t.update(targets=torch.full_like(t["targets"], 99)))
    elif damage == "not_safetensors":
        first.write_bytes(b"\x00" * len(fresh))
    else:  # a batch file left without its content hash (e.g. by an older c2ir)
        first.with_name(first.name + ".sha256").unlink(missing_ok=True)
        _rewrite_batch(first, lambda t: t.update(images=t["images"] * 0.5))
    caplog.clear()
    imp = resolve(SYNTHESIZE, cli_job(cfg)).value
    assert "damaged batch file" in caplog.text
    images, targets = imp.images, imp.targets
    # the recomputed batch equals the one first computed (per-batch seeds): nothing damaged was assembled
    from safetensors.torch import load as load_bytes

    t0 = load_bytes(fresh)
    n = len(t0["images"])
    assert torch.equal(images[:n], t0["images"]) and torch.equal(targets[:n], t0["targets"])


def test_damaged_epoch_file_is_discarded(tmp_path, caplog):
    """A training epoch file with flipped bytes (same size) is not resumed from."""
    from c2ir.data.imageset import ImageSet, Normalizer
    from c2ir.models.small_cnn import SmallCNN
    from c2ir.training import TrainConfig, train_classifier

    g = torch.Generator().manual_seed(0)
    data = ImageSet("t", torch.randint(0, 255, (40, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(40) % 4)
    norm = Normalizer([0.5], [0.25])

    def run(epochs):
        torch.manual_seed(0)
        return train_classifier(SmallCNN(1, 4, 4), data, data, norm, TrainConfig(epochs=epochs, batch_size=8), work)

    work = tmp_path / "work"
    run(1)
    (epoch_file,) = work.glob("epoch_*.safetensors")
    _flip_last_bytes(epoch_file, 8)
    caplog.clear()
    _, history = run(2)
    assert "damaged resume state" in caplog.text and len(history) == 2


# ----- folder data keyed by content ----------------------------------------------------------------
def _png(path: Path, value: int) -> None:
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def test_folder_images_replaced_with_same_size_and_mtime_change_the_key(tmp_path):
    """Issue: images replaced by others of the same size with their mtime kept (cp -p, rsync -t) were served
    from the features cache as the old images."""
    from c2ir.stages.features import dataset_spec
    from c2ir.stages.job import cli_job

    def ood_spec(job, name):
        return dataset_spec(job, f"ood:{name}")

    root = tmp_path / "ood"
    root.mkdir()
    for i in range(3):
        _png(root / f"{i}.png", 10 * i)
    ctx = cli_job(make_cfg(tmp_path, ["ood=[folder]", f"ood.folder.root={root}"]))
    before = ood_spec(ctx, "folder")
    st = (root / "1.png").stat()
    size = st.st_size
    _png(root / "1.png", 200)  # other pixels: constant images of the same size compress to the same length
    assert (root / "1.png").stat().st_size == size
    os.utime(root / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime kept, as cp -p leaves it
    ctx2 = cli_job(make_cfg(tmp_path, ["ood=[folder]", f"ood.folder.root={root}"]))
    assert ood_spec(ctx2, "folder") != before
    # and an unchanged folder keeps its key (touching a file does not change its content)
    os.utime(root / "0.png")
    assert ood_spec(cli_job(make_cfg(tmp_path, ["ood=[folder]", f"ood.folder.root={root}"])), "folder") == ood_spec(ctx2, "folder")


def test_file_digests_are_reused_only_while_a_file_is_unchanged(tmp_path, monkeypatch):
    """The digest table skips re-reading unchanged files, and never trusts an entry once the file's ctime moved."""
    from c2ir.data import digests

    monkeypatch.setattr(digests, "RACY_NS", 0)
    monkeypatch.setattr(digests, "_MEMO", {})
    read = []
    real = digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda p: read.append(Path(p).name) or real(p))
    root = tmp_path / "d"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.bin").write_bytes(bytes([i]) * 100)
    files = sorted(root.iterdir())
    cache = digests.DigestCache(tmp_path / "table")
    first = digests.tree_digest(root, files, cache)
    assert sorted(read) == ["0.bin", "1.bin", "2.bin", "3.bin"]
    read.clear()
    monkeypatch.setattr(digests, "_MEMO", {})  # a new process: only the table on disk
    assert digests.tree_digest(root, files, cache) == first and read == []
    st = (root / "2.bin").stat()
    (root / "2.bin").write_bytes(b"\xff" * 100)
    os.utime(root / "2.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digests.tree_digest(root, files, cache) != first and read == ["2.bin"]


# ----- shared archives keyed by content; damaged extractions found and repaired ----------------------
def _archive(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shared(tmp_path, monkeypatch):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setenv("C2IR_SHARED_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("C2IR_SHARED_CACHE", str(tmp_path / "extracted"))
    return tmp_path / "shared" / "data"


def test_replaced_archive_is_extracted_again(shared):
    """Issue: a shared archive replaced by a new version was never re-extracted (old image count reported)."""
    from c2ir.data.shared import ensure_extracted

    _archive(shared / "x.tar.gz", {"x/a.txt": b"version one", "x/b.txt": b"b"})
    first = ensure_extracted("x.tar.gz")
    assert (first / "x" / "a.txt").read_bytes() == b"version one"
    st = (shared / "x.tar.gz").stat()
    _archive(shared / "x.tar.gz", {"x/a.txt": b"version two", "x/b.txt": b"b", "x/c.txt": b"new"})
    os.utime(shared / "x.tar.gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    second = ensure_extracted("x.tar.gz")
    assert (second / "x" / "a.txt").read_bytes() == b"version two" and (second / "x" / "c.txt").is_file()


@pytest.mark.parametrize("damage", ["modified", "deleted", "added", "old_marker"])
def test_damaged_extraction_is_detected_and_repaired(shared, damage, caplog):
    """Issue: a wrong extraction marked complete stayed for ever and the user was not told."""
    from c2ir.data import shared as shared_mod

    _archive(shared / "x.tar.gz", {"x/a.txt": b"aaaa", "x/b.txt": b"bbbb"})
    dest = shared_mod.ensure_extracted("x.tar.gz")
    target = dest / "x" / "a.txt"
    if damage == "modified":
        st = target.stat()
        target.write_bytes(b"AAAA")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "deleted":
        target.unlink()
    elif damage == "added":
        (dest / "x" / "stray.txt").write_bytes(b"?")
    else:  # the marker of an older c2ir: a plain text line, no file table
        (dest / ".complete").write_text("x.tar.gz\n")
    getattr(shared_mod, "_VERIFIED", set()).clear()  # a new process
    caplog.clear()
    again = shared_mod.ensure_extracted("x.tar.gz")
    assert (again / "x" / "a.txt").read_bytes() == b"aaaa" and not (again / "x" / "stray.txt").exists()
    assert "extracting it again" in caplog.text or damage == "old_marker" and "extracting" in caplog.text


def test_archive_data_is_keyed_by_the_archive_content(shared):
    from omegaconf import OmegaConf

    from c2ir.data.sources import id_fingerprint

    cfg = OmegaConf.create({"source": "shared", "archive": "x.tar.gz", "subdir": "x", "root": None})
    _archive(shared / "x.tar.gz", {"x/test/c0/a.png": b"1234"})
    st = (shared / "x.tar.gz").stat()
    before = id_fingerprint(cfg, "test")
    _flip_last_bytes(shared / "x.tar.gz", 1)  # other bytes, same size, mtime kept
    os.utime(shared / "x.tar.gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert id_fingerprint(cfg, "test") != before


# ----- cache housekeeping ------------------------------------------------------------------------------
def test_stage_folder_replaced_by_a_file_is_one_line(tmp_path):
    store = ArtifactStore(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "s").write_text("not a folder")
    with pytest.raises(C2IRError, match="is a file, not a folder") as err:
        store.get_or_create("s", "k", _build("one"), config={})
    assert "\n" not in str(err.value)


def test_trash_of_any_key_is_removed_by_a_later_run(tmp_path):
    """Issue: `.trash-<key>-*` leftovers stayed after later runs (they were removed only when that key was rebuilt)."""
    import c2ir.cache as cache

    store = ArtifactStore(tmp_path / "cache")
    store.get_or_create("s", "k", _build("one"), config={})
    trash = tmp_path / "cache" / "s" / ".trash-other-deadbeef"
    (trash / "sub").mkdir(parents=True)
    (trash / "sub" / "big.bin").write_bytes(b"x" * 1000)
    (tmp_path / "cache" / "s" / ".trash-k2-deadbeef").write_text("a discarded key that was a file")
    getattr(cache, "_SWEPT", set()).clear()  # a new process
    assert store.get_or_create("s", "k", _build("two"), config={}).manifest["tag"] == "one"  # a cache hit
    assert not list((tmp_path / "cache" / "s").glob(".trash-*"))


def test_failed_training_leaves_no_empty_partial_folder(tmp_path):
    """Issue: a bad-input failure during training left an empty train/<key>.partial/."""
    from c2ir.graph import resolve
    from c2ir.stages.job import cli_job
    from c2ir.stages.train import TRAIN

    job = cli_job(make_cfg(tmp_path, ["train.epochs=1", "data.max_train_samples=64"]))

    def boom(*args, **kwargs):
        (args[1] if len(args) > 1 else kwargs["work"]).mkdir(parents=True, exist_ok=True)
        raise C2IRError("bad input")

    import c2ir.stages.train as train_mod

    real = train_mod.train_model
    train_mod.train_model = boom
    try:
        with pytest.raises(C2IRError):
            resolve(TRAIN, job)
    finally:
        train_mod.train_model = real
    assert not list((tmp_path / "cache" / "train").glob("*.partial"))


# ----- a full disk: one line naming the folder, nothing half-written ---------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("stage", ["train", "synthesize"])
def test_full_disk_during_a_stage_is_one_line_and_leaves_nothing(tmp_path, stage, monkeypatch):
    """The cache disk fills while an epoch or batch file is written: one line naming the folder, no temp file,
    no half-written epoch file or artifact."""
    import c2ir.cache as cache
    from c2ir.graph import resolve
    from c2ir.stages.job import cli_job
    from c2ir.stages.synthesize import SYNTHESIZE
    from c2ir.stages.train import TRAIN

    real = cache.save_file

    def fill_up(tensors, filename, metadata=None):  # writes part of the file, then the disk is full
        Path(filename).write_bytes(b"\0" * 100)
        raise type("SafetensorError", (Exception,), {})(
            "Error while serializing: I/O error: No space left on device (os error 28)")

    if stage == "train":
        job = cli_job(make_cfg(tmp_path, ["train.epochs=2", "data.max_train_samples=64"]))
        monkeypatch.setattr(cache, "save_file", fill_up)
        run = lambda: resolve(TRAIN, job)
    else:
        job = cli_job(_checkpoint_cfg(tmp_path))
        monkeypatch.setattr(cache, "save_file", fill_up)
        run = lambda: resolve(SYNTHESIZE, job)
    with pytest.raises(C2IRError) as err:
        run()
    msg = str(err.value)
    assert "\n" not in msg and "No space left on device" in msg and str(tmp_path / "cache") in msg
    monkeypatch.setattr(cache, "save_file", real)
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"
            and ".file-digests" not in p.parts]
    assert left == [], left


def test_full_disk_on_a_real_small_file_system(tmp_path, monkeypatch, capsys):
    """The same with a real, full tmpfs as cache_root (skipped where mounting is not permitted)."""
    import subprocess

    from c2ir import cli
    from c2ir.models import build_model

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        torch.save(build_model(make_cfg(tmp_path).model).state_dict(), tmp_path / "ck.pt")
        with open(mnt / "filler", "wb", buffering=0) as fh:  # every block taken: c2ir's first file fills the disk
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["synthesize", f"model.checkpoint={tmp_path / 'ck.pt'}", "synth.per_class=1",
                      "synth.iterations=2", f"cache_root={mnt}"])
        stderr = capsys.readouterr().err
        err = [line for line in stderr.splitlines() if line.startswith("c2ir: error") or "Error" in line]
        assert exit_.value.code == 2 and len(err) == 1 and "No space left on device" in err[0] and str(mnt) in err[0], err
        assert "Traceback" not in stderr
        left = [p.name for p in mnt.rglob("*") if p.is_file() and p.name != "filler" and p.suffix != ".lock"]
        assert left == [], left
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_damaged_cached_figure_is_drawn_again(tmp_path, caplog):
    """The report's figure cache is reused bytes too: a cached PNG with other bytes is drawn again, not embedded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from c2ir.report_html import FigureCache

    drawn = []

    def make():
        drawn.append(1)
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1], [1, 0])
        return fig

    cache = FigureCache(tmp_path / "figs")
    good = cache.draw("a figure", make)
    assert cache.draw("a figure", make) == good and len(drawn) == 1  # a cache hit
    (png,) = (tmp_path / "figs").glob("*.png")
    _flip_last_bytes(png, 5)
    caplog.clear()
    assert cache.draw("a figure", make) == good and len(drawn) == 2 and "drawing it again" in caplog.text


def test_training_resumes_from_the_newest_verified_epoch(tmp_path, caplog):
    """A kill between an epoch file and its content hash leaves the newest file unverified: training resumes
    from the epoch before it (not from scratch), and ends as an uninterrupted run does."""
    from c2ir.data.imageset import ImageSet, Normalizer
    from c2ir.models.small_cnn import SmallCNN
    from c2ir.training import TrainConfig, train_classifier

    g = torch.Generator().manual_seed(0)
    data = ImageSet("t", torch.randint(0, 255, (40, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(40) % 4)
    norm = Normalizer([0.5], [0.25])

    def run(epochs, work):
        torch.manual_seed(0)
        return train_classifier(SmallCNN(1, 4, 4), data, data, norm, TrainConfig(epochs=epochs, batch_size=8), work)

    import shutil

    import c2ir.training as training

    work = tmp_path / "work"
    calls = []
    real_eval = training.evaluate_accuracy

    def killed_in_epoch_2(*args, **kwargs):  # the process dies during the second epoch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    training.evaluate_accuracy = killed_in_epoch_2
    try:
        with pytest.raises(KeyboardInterrupt):
            run(3, work)
    finally:
        training.evaluate_accuracy = real_eval
    # ... as it wrote epoch 1's file: the bytes are there, their content hash is not
    shutil.copy2(work / "epoch_0000.safetensors", work / "epoch_0001.safetensors")
    caplog.clear()
    caplog.set_level("INFO", logger="c2ir.training")
    model, history = run(3, work)
    assert "train: 1 of " in caplog.text and "training from the start" not in caplog.text
    ref, _ = run(3, tmp_path / "fresh")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
