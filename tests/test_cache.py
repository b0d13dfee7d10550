"""Cache keys change exactly when the relevant config changes; publishing is atomic; broken artifacts recompute."""

import json
import multiprocessing as mp
import time

import pytest
import torch

from c2ir.cache import ArtifactStore, make_key
from c2ir.graph import key_of
from c2ir.stages.collect_stats import COLLECT_STATS
from c2ir.stages.features import FEATURES, Pass
from c2ir.stages.job import cli_job
from c2ir.stages.synthesize import SYNTHESIZE
from c2ir.stages.train import MODEL
from c2ir.stages.weight_layers import WEIGHT_LAYERS
from conftest import REPO, make_cfg


def _keys(tmp_path, overrides):
    """Every node's key for a composed config (derived from the declarations: nothing is trained or computed)."""
    job = cli_job(make_cfg(tmp_path, overrides))
    keys = {name: key_of(node, job) for name, node in (("model", MODEL), ("synthesize", SYNTHESIZE),
                                                       ("collect_stats", COLLECT_STATS), ("weight_layers", WEIGHT_LAYERS))}
    keys["features:id_test"] = key_of(FEATURES, job, Pass("id_test"))
    keys["ipm"] = make_key("x", dict(job.cfg.ipm))
    for name in job.cfg.ood:
        keys[f"features:{name}"] = key_of(FEATURES, job, Pass(f"ood:{name}"))
    return keys


ALL = {"model", "synthesize", "collect_stats", "weight_layers", "features:id_test", "features:gaussian_noise"}
UPSTREAM_OF_MODEL = ALL  # everything downstream of a trained model


@pytest.mark.parametrize("override,changed", [
    ("ipm=mean_l2", {"ipm"}),
    ("mgi=uniform", {"weight_layers"}),
    ("synth.iterations=7", {"synthesize", "collect_stats", "weight_layers"}),
    ("synth.lr=0.2", {"synthesize", "collect_stats", "weight_layers"}),
    ("train.epochs=3", UPSTREAM_OF_MODEL),
    # one features pass captures every layer set of the model (issue 13): only the layer-specific stages change
    ("layer_set=last", {"collect_stats", "weight_layers"}),
    ("features.capture=configured", set()),     # small_cnn's default set is already every layer
    ("synth.channels_last=true", set()),       # runtime-only options do not change the impressions
    ("detectors=[msp]", set()),                 # evaluate-only
    ("batch_size=64", set()),
    # issue 11: the seed trains the model and seeds synthesis, so everything downstream changes
    ("seed=1", UPSTREAM_OF_MODEL),
    ("synth.seed=5", {"synthesize", "collect_stats", "weight_layers"}),
    # `model.head` decides what `penultimate` is: features and class statistics, not the weights or impressions
    ("model.head=act3", {"collect_stats", "features:id_test", "features:gaussian_noise"}),
    ("ood.gaussian_noise.seed=9", {"features:gaussian_noise"}),
    ("data.flip_invariant=true", ALL),          # decides training augmentation and synthesis flips
])
def test_keys_change_exactly_when_relevant(tmp_path, override, changed):
    base, new = _keys(tmp_path, ["ood=[gaussian_noise]"]), _keys(tmp_path, ["ood=[gaussian_noise]", override])
    assert {k for k in base if base[k] != new[k]} == changed


def test_seed_is_not_in_keys_of_a_checkpoint_model(tmp_path):
    """With a checkpoint used as it is, the seed changes synthesis and statistics only."""
    from c2ir.models import build_model

    cfg = make_cfg(tmp_path)
    torch.save(build_model(cfg.model).state_dict(), tmp_path / "ck.pt")
    base = _keys(tmp_path, ["ood=[gaussian_noise]", f"model.checkpoint={tmp_path / 'ck.pt'}"])
    new = _keys(tmp_path, ["ood=[gaussian_noise]", f"model.checkpoint={tmp_path / 'ck.pt'}", "seed=2"])
    assert {k for k in base if base[k] != new[k]} == {"synthesize", "collect_stats", "weight_layers"}


def test_ood_help_text_and_url_are_not_in_keys(tmp_path):
    base = _keys(tmp_path, ["ood=[isun]"])
    new = _keys(tmp_path, ["ood=[isun]", "ood.isun.layout=other words", "ood.isun.url=https://example.org/x.tgz"])
    assert base == new


def test_every_config_field_is_in_a_key_or_runtime_only(tmp_path):
    """A config field that no node's KeyRule covers and RUNTIME_ONLY does not list fails here."""
    from c2ir.config import config_dir
    from c2ir.graph import uncovered_fields
    from c2ir.stages import load_all

    load_all()
    oods = ",".join(sorted(p.stem for p in (config_dir() / "ood").glob("*.yaml")))
    dets = ",".join(sorted(p.stem for p in (config_dir() / "detectors").glob("*.yaml")))
    combos = [[f"ood=[{oods}]", f"detectors=[{dets}]"], ["data=imagefolder"], ["data=cifar10", "model=torchvision"]]
    combos += [[f"model={p.stem}", "data=cifar10"] for p in (config_dir() / "model").glob("*.yaml")]
    combos += [[f"{g}={p.stem}"] for g in ("data", "synth", "train", "ipm", "mgi", "experiment")
               for p in (config_dir() / g).glob("*.yaml")]
    for overrides in combos:
        assert uncovered_fields(make_cfg(tmp_path, overrides)) == [], overrides
    # and the walk does catch a field nobody declared
    assert sorted(uncovered_fields(make_cfg(tmp_path, ["+new_knob=1", "+data.new_knob=2"]))) == ["data.new_knob", "new_knob"]


KEYS_PRINT = ("import json, sys; sys.path.insert(0, 'tests'); from pathlib import Path; from test_cache import _keys; "
              "print(json.dumps([_keys(Path(sys.argv[1]), o) for o in json.loads(sys.argv[2])]))")
KEY_OVERRIDES = ([], ["ood=[gaussian_noise,photo_patches]", "ipm=mean_l2"])


def test_keys_are_stable_across_processes(tmp_path):
    """Keys computed in two fresh interpreters (own hash seeds, own import order) equal this process's (both
    override sets in each interpreter: two process starts, not four)."""
    import json
    import os
    import subprocess
    import sys

    outs = [subprocess.run([sys.executable, "-c", KEYS_PRINT, str(tmp_path), json.dumps(KEY_OVERRIDES)], cwd=REPO,
                           check=True, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")]
    here = [_keys(tmp_path, o) for o in KEY_OVERRIDES]
    assert json.loads(outs[0]) == json.loads(outs[1]) == json.loads(json.dumps(here))
    assert here[0] != here[1]   # the two override sets really key differently


def _build(tag):
    def build(out):
        out.save_tensors("t.safetensors", {"x": torch.arange(10)})
        out.file("tag.txt").write_text(tag)
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
        out.file("half.bin").write_bytes(b"123")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.get_or_create("s", "k", boom, config={})
    assert store.lookup("s", "k") is None
    assert not [p for p in (tmp_path / "s").iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("damage", ["manifest", "truncate", "same_size_bytes", "header", "manifest_not_object"])
def test_broken_artifact_is_recomputed(tmp_path, damage, caplog):
    store = ArtifactStore(tmp_path)
    art = store.get_or_create("s", "k", _build("one"), config={})
    f = art.path / "t.safetensors"
    if damage == "manifest":
        (art.path / "manifest.json").unlink()
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-7])
    elif damage == "same_size_bytes":  # issue 11: bytes changed, size kept (used silently before)
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "header":  # a corrupt safetensors header, same size
        f.write_bytes(b"\xff" * 8 + f.read_bytes()[8:])
    else:  # valid JSON, not an object
        (art.path / "manifest.json").write_text("[1, 2]")
    again = store.get_or_create("s", "k", _build("two"), config={})
    assert again.manifest["tag"] == "two"
    assert "discarding and recomputing" in caplog.text
    assert torch.equal(again.tensors("t.safetensors")["x"], torch.arange(10))


def test_downstream_is_recomputed_when_upstream_content_changes(tmp_path, caplog):
    """An artifact built from an upstream artifact does not stay cached on top of a different upstream."""
    store = ArtifactStore(tmp_path)
    up = store.get_or_create("up", "u", _build("one"), config={})
    down = store.get_or_create("down", "d", _build("from-one"), config={}, inputs={"up": up.digest})
    # the upstream is recomputed with other bytes (damage detected, or a nondeterministic rebuild)
    import shutil
    shutil.rmtree(up.path)
    up2 = store.get_or_create("up", "u", lambda out: out.file("x.txt").write_text("other") and {}, config={})
    assert up2.digest != up.digest
    again = store.get_or_create("down", "d", _build("from-two"), config={}, inputs={"up": up2.digest})
    assert again.manifest["tag"] == "from-two" and "different upstream" in caplog.text
    # identical upstream content: the downstream artifact is reused
    assert store.get_or_create("down", "d", _build("x"), config={}, inputs={"up": up2.digest}).manifest["tag"] == "from-two"


def test_leftovers_of_killed_builders_are_removed(tmp_path):
    store = ArtifactStore(tmp_path)
    (tmp_path / "s" / ".tmp-k-999999-abcd1234").mkdir(parents=True)
    (tmp_path / "s" / ".tmp-k-999999-abcd1234" / "big.bin").write_bytes(b"x" * 1000)
    (tmp_path / "s" / "k.partial").mkdir()
    (tmp_path / "s" / "other.partial").mkdir()
    (tmp_path / "s" / "other.partial" / "batch_00000.safetensors").write_bytes(b"resumable")
    store.get_or_create("s", "k", _build("one"), config={})
    left = sorted(p.name for p in (tmp_path / "s").iterdir() if not p.name.endswith(".lock"))
    assert left == ["k", "other.partial"]  # another key's resumable work is kept


def _slow_worker(root, q):
    store = ArtifactStore(root)

    def build(out):
        time.sleep(1.0)
        out.file("pid.txt").write_text(str(mp.current_process().pid))
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


def test_published_files_are_readable_as_a_plain_open_would_make_them(tmp_path):
    """safetensors creates 0600 files; a cache_root shared by a group must get the umask's mode."""
    import torch

    from c2ir.cache import FILE_MODE, atomic_save_tensors, atomic_write_json

    atomic_save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    atomic_write_json(tmp_path / "j.json", {"a": 1})
    assert {(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {FILE_MODE}
