"""The artifact graph: keys, manifests and digests come from the node declarations; the same nodes run on
the disk and the memory store; a Job is plain data; the import structure has no circle and no face below."""

import ast
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from c2ir.cache import ArtifactStore, MemoryStore
from c2ir.distributed import DistInfo
from c2ir.graph import Job, KeyRule, Node, Resolved, Use, key_of, resolve
from conftest import REPO, make_cfg

calls: list[str] = []
RAW_RULE = KeyRule(("raw",))


def _raw(step, out):
    calls.append("raw")
    out.save_tensors("x.safetensors", {"x": torch.arange(3) * int(step.job.cfg.raw.scale)})
    return {}


def _double(step, out):
    calls.append("double")
    x = step.value("raw")
    if step.has("note"):
        step.value("note")
    out.save_tensors("x.safetensors", {"x": 2 * x})
    out.save_json("meta.json", {"n": len(x)})
    return {"n": len(x)}


def _load(art, job, _):
    return art.tensors("x.safetensors")["x"]


RAW = Node("raw", version=1, rule=RAW_RULE, build=_raw, load=_load)
NOTE = Node("note", version=1, build=lambda step, out: calls.append("note") or out.save_json("n.json", 1),
            load=lambda art, job, _: art.json("n.json"))
DOUBLE = Node("double", version=3, rule=KeyRule(("double",)), spec=lambda job, _: {"layers": job.layers},
              uses=lambda job, _: {"raw": Use(RAW), "note": Use(NOTE, keyed=False)}, build=_double, load=_load,
              seed=lambda job: 7)


def _job(store, scale=1, width=1, layers=("a",), given=None):
    cfg = OmegaConf.create({"raw": {"scale": scale}, "double": {"width": width}, "seed": 0, "batch_size": 1})
    return Job(cfg=cfg, store=store, device=torch.device("cpu"), dist=DistInfo(),
               layer_names=lambda: (list(layers), list(layers)), input_shape=(1, 1, 1), given=dict(given or {}))


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_keys_manifests_and_values_come_from_the_declarations(tmp_path, kind):
    store = ArtifactStore(tmp_path) if kind == "disk" else MemoryStore()
    calls.clear()
    r = resolve(DOUBLE, _job(store))
    assert torch.equal(r.value, torch.tensor([0, 2, 4])) and calls == ["raw", "double", "note"]
    raw_key = key_of(RAW, _job(store))
    assert r.key == key_of(DOUBLE, _job(store))
    m = r.artifact.manifest
    assert m["config"] == {"double.width": 1, "layers": ["a"]} and m["upstream"] == {"raw": raw_key}
    assert m["inputs"] == {"raw": resolve(RAW, _job(store)).digest} and m["seed"] == 7 and m["n"] == 3
    assert r.artifact.json("meta.json") == {"n": 3}
    calls.clear()
    assert torch.equal(resolve(DOUBLE, _job(store)).value, r.value) and calls == []  # hit: not even the unkeyed note
    # the key moves with the node's own fields, its spec and its keyed inputs' fields, and nothing else
    assert key_of(DOUBLE, _job(store, width=2)) != r.key and key_of(RAW, _job(store, width=2)) == raw_key
    assert key_of(DOUBLE, _job(store, layers=("b",))) != r.key
    assert key_of(DOUBLE, _job(store, scale=3)) != r.key


def test_a_given_input_replaces_its_node(tmp_path):
    given = {("raw", None): Resolved("given-raw", "given:1", None, lambda: torch.tensor([5]))}
    calls.clear()
    r = resolve(DOUBLE, _job(MemoryStore(), given=given))
    assert torch.equal(r.value, torch.tensor([10])) and "raw" not in calls
    assert r.artifact.manifest["upstream"] == {"raw": "given-raw"}


def test_an_upstream_rebuilt_with_other_bytes_rebuilds_the_downstream(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    first = resolve(DOUBLE, _job(store))
    shutil.rmtree(first.artifact.path.parent.parent / "raw")
    calls.clear()
    orig = RAW.build
    object.__setattr__(RAW, "build", lambda step, out: out.save_tensors("x.safetensors", {"x": torch.ones(3, dtype=torch.long)}))
    try:
        again = resolve(DOUBLE, _job(store))
    finally:
        object.__setattr__(RAW, "build", orig)
    assert again.key == first.key and torch.equal(again.value, torch.full((3,), 2))
    assert "different upstream" in caplog.text


def test_a_cli_job_is_plain_data(tmp_path, monkeypatch):
    """Making a job computes nothing and sets no process-wide state (torch threads, torchrun's group)."""
    from c2ir.stages.job import cli_job

    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: only the CLI entry point joins the group
    threads = torch.get_num_threads()
    job = cli_job(make_cfg(tmp_path, [f"threads={threads + 1}"]))  # a value the process does not have
    assert not torch.distributed.is_initialized()
    assert (job.dist.rank, job.dist.world) == (0, 1)
    assert torch.get_num_threads() == threads
    assert not (tmp_path / "cache" / "train").exists() and job.layers == ["act1", "act2", "act3"]


def test_the_model_comes_from_the_checkpoint_or_the_train_stage(tmp_path):
    from c2ir.models import build_model
    from c2ir.stages.job import cli_job
    from c2ir.stages.train import MODEL, TRAIN, classifier, uses_training

    cfg = make_cfg(tmp_path)
    model = build_model(cfg.model)
    torch.save(model.state_dict(), tmp_path / "ck.pt")
    job = cli_job(make_cfg(tmp_path, [f"model.checkpoint={tmp_path / 'ck.pt'}"]))
    assert not uses_training(job.cfg) and resolve(MODEL, job).digest.startswith("checkpoint:")
    assert not classifier(job).training
    for k, v in model.state_dict().items():
        assert torch.equal(classifier(job).state_dict()[k], v), k
    trained = cli_job(cfg)
    assert uses_training(trained.cfg) and key_of(MODEL, trained) == key_of(TRAIN, trained)


# ----- the import structure ---------------------------------------------------------------------------
def _imports() -> dict[str, set[str]]:
    """{module: c2ir modules it imports at module level} (imports inside functions are deferred on purpose)."""
    paths = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (REPO / "c2ir").rglob("*.py")}
    out = {}
    for mod, path in paths.items():
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("c2ir"):
                # `from pkg import submodule` depends on the submodule, not on the package's face
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(paths)
                found |= subs or {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("c2ir")}
        # a module of a package reaches its siblings, not the package face that re-exports them
        out[mod] = {i for i in found if i in paths and i != mod and not mod.startswith(i + ".")}
    return out


def test_no_import_circle_and_no_library_module_imports_a_face():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if n == "c2ir":
                continue
            assert state.get(n) != 1, "import circle: " + " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    faces = {"c2ir.cli": set(), "c2ir.api": {"c2ir.cli"}, "c2ir.stages": {"c2ir.cli", "c2ir.api"}}
    for m, imps in graph.items():
        below = not m.startswith(("c2ir.cli", "c2ir.api", "c2ir.stages", "c2ir.__main__")) and m != "c2ir"
        for n in imps:
            if below:
                assert not n.startswith(("c2ir.cli", "c2ir.api", "c2ir.stages")), f"{m} imports the face {n}"
            for face, above in faces.items():
                if m.startswith(face):
                    assert not n.startswith(tuple(above)), f"{m} imports {n}, which stands above it"
