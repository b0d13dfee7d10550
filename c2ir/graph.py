"""The artifact graph: each artifact is declared once, as a `Node`; `resolve` does the rest.

A node names its artifact (the store's folder), its code version, the config fields its
output depends on (a `KeyRule`, plus `spec` for derived entries such as the layer list),
the nodes it reads (`uses`), and how to build and load it. From that declaration alone
`resolve(node, job)` derives the cache key, the manifest (config, upstream keys, content
digests of the inputs, seed), looks the artifact up and verifies it, or builds it under the
store's lock, and returns its value. The same nodes run on the CLI's disk store and on the
Python API's memory store (c2ir.cache), so `c2ir evaluate` and `c2ir.C2IR(...).fit()` cannot
drift: they are the same code path with different stores and inputs.

A use is keyed (its key enters this node's key and its digest is verified on read) or not
(`keyed=False`: read while building, implied by another input's key, e.g. the impressions'
pixels behind the statistics of collect-stats). Keyed inputs are resolved first, in order;
unkeyed ones only when the build reads them.

The key of a node: `make_key(name, {"v": version, **key_fields(cfg, rule), **spec}, upstream)`.
`key_fields` selects the config fields a rule covers, minus runtime-only fields and fields
at their key-neutral value (c2ir.schema).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from c2ir.cache import make_key
from c2ir.validation import neutral_fields

log = logging.getLogger(__name__)

# Fields no artifact depends on (how or where a run happens, not what it computes).
RUNTIME_ONLY = ("stage", "device", "threads", "batch_size", "num_workers", "cache_root", "output_dir", "paths", "hydra",
                "synth.channels_last", "synth.compile",
                # the checkpoint enters keys by its content hash
                "model.checkpoint", "model.trust_checkpoint", "model.require_checkpoint",
                # which layers a cached pass records beyond the configured ones: it enters the features key
                # as the captured layer list (stages/features.py) and never changes a score
                "features.capture",
                "data.download", "data.layout", "ood.*.layout", "ood.*.url", "ood.*.md5", "ood.*.download",
                # `c2ir score` writes its per-file scores into the run directory, uncached
                "score.input", "score.resize",
                # whether the run directory gets report.html and its plots: never changes a result
                "report.figures",
                # presentation only: a set's near/far group (its mean row, computed at report time) and the
                # published table shown beside the measured rows
                "ood.*.group", "report.published")
_RULES: list["KeyRule"] = []


@dataclass(frozen=True)
class KeyRule:
    """The config fields an artifact depends on. A pattern is a dotted path covering its subtree;
    `*` matches one segment and `{name}` the data set a per-set artifact is keyed for. Every rule
    registers itself, so `uncovered_fields` can check that no config field is in no key."""

    fields: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _RULES.append(self)


def _matches(pattern: str, path: str, name: str | None = None) -> bool:
    """Does `pattern` cover the dotted `path` (pattern segments match a prefix of the path's)?"""
    pat, parts = pattern.split("."), path.split(".")
    if len(pat) > len(parts):
        return False
    for p, q in zip(pat, parts):
        if p == "*" or (p == "{name}" and (name is None or q == name)):
            continue
        if p != q:
            return False
    return True


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (for hashing and manifests)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted path: leaf value} of a plain config (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def key_fields(cfg: Any, rule: KeyRule, name: str | None = None) -> dict[str, Any]:
    """The values of the config fields `rule` selects, as {dotted path: value}."""
    flat = flatten(plain(cfg))
    neutral = neutral_fields(cfg)
    return {p: v for p, v in sorted(flat.items())
            if any(_matches(f, p, name) for f in rule.fields)
            and not any(_matches(x, p, name) for x in (*rule.exclude, *RUNTIME_ONLY))
            and not (p in neutral and v == neutral[p])}


def uncovered_fields(cfg: Any) -> list[str]:
    """Config fields that are in no rule and not runtime-only (must be empty; the rules register
    when the modules declaring them are imported: c2ir.stages imports them all)."""
    return [p for p in flatten(plain(cfg))
            if not any(_matches(f, p) for f in RUNTIME_ONLY)
            and not any(_matches(f, p) for r in _RULES for f in r.fields)]


# ----- nodes and jobs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Use:
    """An input of a node: `node` (for data set `param`); `keyed=False`: read, implied by another key."""

    node: "Node"
    param: Any = None
    keyed: bool = True


@dataclass(frozen=True, eq=False)
class Node:
    """One artifact, declared once (module docstring). `source` instead of `build` declares an input
    that is not stored (the model given as a checkpoint): it returns the Resolved directly."""

    name: str
    version: int = 1
    rule: KeyRule | None = None
    spec: Callable[["Job", Any], dict[str, Any]] | None = None         # derived key entries
    uses: Callable[["Job", Any], dict[str, Use]] | None = None
    upstream: Callable[["Job", Any], dict[str, str]] | None = None    # key inputs that are not nodes
    build: Callable[["Step", Any], Mapping[str, Any] | None] | None = None   # (step, output) -> manifest extras
    load: Callable[[Any, "Job", Any], Any] | None = None              # (artifact, job, param) -> value
    seed: Callable[["Job"], int | None] | None = None
    resumable: bool = False      # the build gets a partial folder that survives a crash (step.work)
    prepare: Callable[["Step"], Any] | None = None   # under torchrun: run on every rank before rank 0 builds
    source: Callable[["Job", Any], "Resolved"] | None = None
    source_key: Callable[["Job", Any], str] | None = None   # a source's key, without reading anything

    def __repr__(self) -> str:
        return f"Node({self.name})"


class Resolved:
    """A resolved node: its key, its content digest, its artifact (None for a source) and its value,
    loaded on first use (a cache hit loads nothing it is not asked for)."""

    def __init__(self, key: str, digest: str, artifact: Any = None, value: Callable[[], Any] | None = None):
        self.key, self.digest, self.artifact = key, digest, artifact
        self._value = value

    @cached_property
    def value(self) -> Any:
        return None if self._value is None else self._value()


@dataclass
class Job:
    """What one run resolves nodes for: the validated config, the store, where to compute, the layers,
    and inputs given instead of computed ({(node name, param): Resolved}: the API's model, impressions
    or ID features). Plain data: building a Job computes nothing; the layer names are resolved on first
    use (`layer_names` returns the run's layers and the layers a cached pass captures)."""

    cfg: DictConfig
    store: Any
    device: Any
    dist: Any
    layer_names: Callable[[], tuple[list[str], list[str]]]
    input_shape: tuple[int, int, int] | None
    layer_patterns: list[str] | None = None
    synthesis: bool = True     # impressions can be had (synthesised, or given): data-free fits and thresholds
    given: dict[tuple[str, Any], Resolved] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self._layers()[0])

    @property
    def capture_layers(self) -> list[str]:
        return list(self._layers()[1])

    def _layers(self) -> tuple[list[str], list[str]]:
        if "layer_names" not in self.memo:
            self.memo["layer_names"] = self.layer_names()
        return self.memo["layer_names"]

    @property
    def batch_size(self) -> int:
        return int(self.cfg.batch_size)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


@dataclass
class Step:
    """One build in progress: its job, parameter, key, inputs and (resumable nodes) partial folder."""

    job: Job
    node: Node
    param: Any
    key: str
    inputs: dict[str, Resolved]
    lazy: dict[str, Use]
    work: Path | None = None
    prepared: Any = None
    result: Any = None       # the value, when the build has it in memory (saves reading it back)
    has_result: bool = False

    def has(self, role: str) -> bool:
        return role in self.inputs or role in self.lazy

    def input(self, role: str) -> Resolved:
        if role not in self.inputs:
            use = self.lazy[role]
            self.inputs[role] = resolve(use.node, self.job, use.param)
        return self.inputs[role]

    def value(self, role: str) -> Any:
        return self.input(role).value

    def keep(self, value: Any) -> None:
        self.result, self.has_result = value, True


def resolve(node: Node, job: Job, param: Any = None) -> Resolved:
    """The node's artifact for this job: found and verified, or built (once, under the store's lock)."""
    memo = (node.name, param)
    if memo in job.given:
        return job.given[memo]
    if memo not in job.memo:
        job.memo[memo] = node.source(job, param) if node.source is not None else _resolve(node, job, param)
    return job.memo[memo]


def _identity(node: Node, job: Job, param: Any, keys: dict[str, str]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(key, key spec, upstream keys) of a node, from its declaration and its keyed inputs' keys."""
    spec = {**(key_fields(job.cfg, node.rule) if node.rule else {}), **(node.spec(job, param) if node.spec else {})}
    upstream = {**keys, **(node.upstream(job, param) if node.upstream else {})}
    return make_key(node.name, {"v": node.version, **spec}, upstream), spec, upstream


def key_of(node: Node, job: Job, param: Any = None) -> str:
    """The node's cache key, derived from the declarations alone: nothing is built or read (tests, tools)."""
    if (node.name, param) in job.given:
        return job.given[(node.name, param)].key
    if node.source is not None:
        return node.source_key(job, param) if node.source_key else resolve(node, job, param).key
    uses = node.uses(job, param) if node.uses else {}
    return _identity(node, job, param, {r: key_of(u.node, job, u.param) for r, u in uses.items() if u.keyed})[0]


def _resolve(node: Node, job: Job, param: Any) -> Resolved:
    uses = node.uses(job, param) if node.uses else {}
    inputs = {role: resolve(u.node, job, u.param) for role, u in uses.items() if u.keyed}
    key, spec, upstream = _identity(node, job, param, {role: r.key for role, r in inputs.items()})
    digests = {role: r.digest for role, r in inputs.items()}
    step = Step(job, node, param, key, inputs, {role: u for role, u in uses.items() if not u.keyed})
    manifest = {"config": spec, "upstream": upstream, "inputs": digests,
                "seed": node.seed(job) if node.seed else None}
    store, dist = job.store, job.dist
    build = node.build

    def run(out: Any) -> Mapping[str, Any] | None:
        return build(step, out)

    # a resumable build keeps its finished parts in the key's partial folder (None in memory); the store
    # removes the folder on the way out when it holds nothing, so a failed build leaves no empty folder
    with store.resumable(node.name, key) if node.resumable else contextlib.nullcontext() as work:
        step.work = work
        if dist.enabled and node.prepare is not None:
            art = store.lookup(node.name, key, digests)
            if art is None:   # every rank takes its share of the work, then rank 0 publishes
                step.prepared = node.prepare(step)
                dist.barrier()
                if dist.is_main:
                    store.get_or_create(node.name, key, run, **manifest)
                dist.barrier()
                art = store.lookup(node.name, key, digests)
            else:
                log.info("cache hit: %s/%s", node.name, key)
        else:
            art = store.get_or_create(node.name, key, run, **manifest)
        if work is not None and dist.is_main:
            shutil.rmtree(work, ignore_errors=True)
    load = node.load
    value = (lambda: step.result) if step.has_result else (None if load is None else (lambda: load(art, job, param)))
    return Resolved(key, art.digest, art, value)
