"""Cache keys change exactly when the relevant config changes; publishing is atomic; broken artifacts recompute."""

import json
import multiprocessing as mp
import time

import pytest
import torch

from c2ir.cache import ArtifactStore, atomic_save_tensors
from c2ir.stages.collect_stats import stats_key
from c2ir.stages.common import Context
from c2ir.stages.synthesize import synth_key
from conftest import make_cfg


def _keys(tmp_path, overrides):
    ctx = Context(make_cfg(tmp_path, overrides))
    sk = synth_key(ctx)
    from c2ir.cache import make_key

    return {
        "model": ctx.model_key,
        "synthesize": sk,
        "collect_stats": stats_key(ctx, sk),
        "weight_layers": ctx.key("weight_layers", {"mgi": dict(ctx.cfg.mgi), "layers": ctx.layers}, {"impressions": sk}),
        "ipm": make_key("x", dict(ctx.cfg.ipm)),
    }


@pytest.mark.parametrize("override,changed", [
    ("ipm=mean_l2", {"ipm"}),
    ("mgi=uniform", {"weight_layers"}),
    ("synth.iterations=7", {"synthesize", "collect_stats", "weight_layers"}),
    ("synth.lr=0.2", {"synthesize", "collect_stats", "weight_layers"}),
    ("train.epochs=3", {"model", "synthesize", "collect_stats", "weight_layers"}),
    ("layer_set=last", {"collect_stats", "weight_layers"}),
    ("synth.channels_last=true", set()),       # runtime-only options do not change the impressions
    ("detectors=[msp]", set()),                 # evaluate-only
    ("ood=[gaussian_noise]", set()),
    ("batch_size=64", set()),
])
def test_keys_change_exactly_when_relevant(tmp_path, override, changed):
    base, new = _keys(tmp_path, []), _keys(tmp_path, [override])
    assert {k for k in base if base[k] != new[k]} == changed


def test_keys_are_stable_across_processes(tmp_path):
    assert _keys(tmp_path, []) == _keys(tmp_path, [])


def _build(tag):
    def build(out):
        atomic_save_tensors(out / "t.safetensors", {"x": torch.arange(10)})
        (out / "tag.txt").write_text(tag)
        return {"tag": tag}
    return build


def test_publish_and_hit(tmp_path):
    store = ArtifactStore(tmp_path)
    a = store.get_or_create("s", "k1", _build("first"), config={})
    b = store.get_or_create("s", "k1", _build("second"), config={})
    assert a.path == b.path and b.manifest["tag"] == "first"
    assert json.loads((a.path / "manifest.json").read_text())["files"]["t.safetensors"]["size"] > 0
    assert not list(tmp_path.glob("s/.tmp-*"))


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom(out):
        (out / "half.bin").write_bytes(b"123")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.get_or_create("s", "k", boom, config={})
    assert store.lookup("s", "k") is None
    assert not [p for p in (tmp_path / "s").iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("damage", ["manifest", "truncate"])
def test_broken_artifact_is_recomputed(tmp_path, damage, caplog):
    store = ArtifactStore(tmp_path)
    art = store.get_or_create("s", "k", _build("one"), config={})
    if damage == "manifest":
        (art.path / "manifest.json").unlink()
    else:
        f = art.path / "t.safetensors"
        f.write_bytes(f.read_bytes()[:-7])
    again = store.get_or_create("s", "k", _build("two"), config={})
    assert again.manifest["tag"] == "two"
    assert "incomplete" in caplog.text
    assert torch.equal(again.tensors("t.safetensors")["x"], torch.arange(10))


def _slow_worker(root, q):
    store = ArtifactStore(root)

    def build(out):
        time.sleep(1.0)
        (out / "pid.txt").write_text(str(mp.current_process().pid))
        return {}

    art = store.get_or_create("s", "same", build, config={})
    q.put((art.path / "pid.txt").read_text())


def test_concurrent_processes_compute_a_key_once(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_slow_worker, args=(str(tmp_path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [q.get(timeout=5) for _ in procs]
    assert results[0] == results[1]  # both read the single artifact one of them built
    assert len([p for p in (tmp_path / "s").iterdir() if not p.name.startswith(".")]) == 1
