"""What every stage shares: the resolved config, the artifact store, the device, the model.

The model itself comes from the train stage (`train.classifier`: its trained weights, or
`model.checkpoint` as given); loading and checking it is library code (`c2ir.models.loading`).

Cache keys are built here from explicit config subsets, so each stage's key depends on
exactly the fields that change its output (plus the keys of its upstream artifacts).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from c2ir import distributed
from c2ir.cache import ArtifactStore, file_sha256, make_key
from c2ir.data.digests import DigestCache
from c2ir.data.imageset import Normalizer
from c2ir.device import resolve_device
from c2ir.errors import C2IRError
from c2ir.extraction import resolve_layers
from c2ir.models import head_module, published_weights
from c2ir.models.loading import build_classifier
from c2ir.schema import validate
from c2ir.stages import train

log = logging.getLogger(__name__)

DIGESTS_FOLDER = ".file-digests"  # under cache_root: the remembered SHA-256 of folder data files

# Per stage: a code version; bump it when a stage's output format or algorithm changes.
STAGE_VERSIONS = {"train": 2, "synthesize": 2, "collect_stats": 3, "weight_layers": 2, "features": 2,
                  "image_scores": 2, "evaluate": 5, "model": 2}  # evaluate 3: per-layer AUROC; 4: not_computable
# (issue 24) or c2ir_fit (issue 21); 5: both. collect_stats 3: the tied within-class precision per layer (ipm=mahalanobis)


@dataclass(frozen=True)
class KeyRule:
    """The config fields one stage's output depends on (its cache key), declared in one place.

    A pattern is a dotted config path that covers its whole subtree; `*` matches one
    segment and `{name}` the dataset a per-dataset stage is keyed for. Upstream artifacts
    enter a key as their keys (and their content digests are checked on read, see cache.py).
    """

    fields: tuple[str, ...]
    exclude: tuple[str, ...] = ()


# ID data fields that decide which images a split holds (folder sources add a content fingerprint).
_DATA = ("data.name", "data.source", "data.dataset", "data.root", "data.archive", "data.subdir", "data.image_size",
         "data.channels", "data.seed", "data.num_classes", "data.mean", "data.std", "data.resize", "data.data_dir")
# Model fields that are not the network's function: the checkpoint enters keys by its content hash.
_MODEL_RUNTIME = ("model.checkpoint", "model.trust_checkpoint", "model.description", "model.require_checkpoint")
_LAYERS = ("layer_set", "model.layer_sets", "model.head")  # which activations / which `penultimate` are read

KEY_RULES: dict[str, KeyRule] = {
    # `seed` draws the initial weights and the batch order/augmentation
    "train": KeyRule(("seed", "model", "train", *_DATA, "data.train_split", "data.max_train_samples",
                      "data.flip_invariant"), exclude=(*_MODEL_RUNTIME, *_LAYERS)),
    # a checkpoint used as it is (no training): no seed
    "model": KeyRule(("model",), exclude=(*_MODEL_RUNTIME, *_LAYERS)),
    # synth.seed (default: ${seed}) draws the starting noise, jitter and flips
    "synthesize": KeyRule(("synth", "data.num_classes", "data.channels", "data.image_size", "data.jitter",
                           "data.flip_invariant")),
    # `seed` draws the fixed sample of spatial vectors per class
    "collect_stats": KeyRule(("seed", "collect_stats", "features.spatial_grid", *_LAYERS, "evaluate.max_train_samples")),
    "weight_layers": KeyRule(("mgi", "layer_set", "model.layer_sets")),  # gradients on impressions: no seed
    # the captured layers enter the features key as a list (stages/features.py), not through the
    # layer set: one pass per dataset serves every `layer_set=`
    "features:id_test": KeyRule((*_DATA, "data.test_split", "data.max_test_samples", "model.head")),
    "features:id_train": KeyRule((*_DATA, "data.train_split", "evaluate.max_train_samples", "model.head")),
    # an OOD set's own seed chooses its fixed subset / random crops / noise; help text and download
    # location do not change the images
    "features:ood": KeyRule(("ood.{name}", "data.image_size", "data.channels", "model.head"),
                            exclude=("ood.{name}.layout", "ood.{name}.url", "ood.{name}.md5", "ood.{name}.download",
                                     "ood.{name}.name")),
    # plus the evaluated sets' feature keys as upstream; `ood.<set>.name` is only the column's name
    "evaluate": KeyRule(("detectors", "ipm", "ood.*.name", "metrics")),
    # the fitted detector `c2ir score` caches: its resolved type + parameters and threshold share
    # (stages/score.py builds the key from those resolved values and the fit inputs' keys)
    "score": KeyRule(("score.detector", "score.tpr")),
}
# Fields declared after artifacts were cached, with the value that reproduces what the code did
# before they were declared: at that value a field stays out of keys (so declaring a default
# does not invalidate every cache); any other value enters the key like any field.
KEY_NEUTRAL: dict[str, Any] = {"train.pad": None,  # null: max(1, data.image_size // 8), as before
                               "metrics.fpr_positive": "id",  # id: FPR95 with ID positive, as before
                               # issue 20's synthesis options at the values of the code before them
                               # (synth=deepinversion keeps the key of the former synth=default)
                               "synth.lr_schedule": "cosine", "synth.warmup_iterations": 0, "synth.warmup_min_size": 16,
                               "synth.stop_patience": 0, "synth.stop_tol": 0.01, "synth.bn_stats": "hooks"}
# Fields no stage's output depends on (how or where a run happens, not what it computes).
RUNTIME_ONLY = ("stage", "device", "threads", "batch_size", "num_workers", "cache_root", "output_dir", "paths", "hydra",
                "synth.autocast", "synth.channels_last", "synth.compile", *_MODEL_RUNTIME,
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


def key_fields(cfg: Any, rule: str, name: str | None = None) -> dict[str, Any]:
    """The values of the config fields `KEY_RULES[rule]` selects, as {dotted path: value}."""
    return select_fields(flatten(plain(cfg)), rule, name)


def select_fields(flat: Mapping[str, Any], rule: str, name: str | None = None) -> dict[str, Any]:
    """`key_fields` on an already flattened config (`RunContext` flattens its config once)."""
    r = KEY_RULES[rule]
    return {p: v for p, v in sorted(flat.items())
            if any(_matches(f, p, name) for f in r.fields)
            and not any(_matches(x, p, name) for x in (*r.exclude, *RUNTIME_ONLY))
            and not (p in KEY_NEUTRAL and v == KEY_NEUTRAL[p])}


def uncovered_fields(cfg: Any) -> list[str]:
    """Config fields that are in no stage's key and not declared runtime-only (must be empty)."""
    flat = flatten(plain(cfg))
    return [p for p in flat
            if not any(_matches(f, p) for f in RUNTIME_ONLY)
            and not any(any(_matches(f, p) for f in r.fields) for r in KEY_RULES.values())]


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (for hashing and manifests)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


class RunContext:
    """Lazily resolved inputs shared by the stages of one invocation.

    Constructing one has no side effects on process-wide state: torch threads and the torchrun
    process group are set up by the CLI entry point (`cli.py`), not here.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = validate(cfg)
        self.store = ArtifactStore(cfg.cache_root)
        self._data_specs: dict[str, dict[str, Any]] = {}
        self.device = resolve_device(str(cfg.device))
        self.dist = distributed.current()  # reads the process group the CLI joined; initialises nothing
        # content digests of folder data, remembered while a file is unchanged (c2ir.data.digests)
        self.digests = DigestCache(self.store.root / DIGESTS_FOLDER)

    # ----- config subsets -------------------------------------------------------------
    def key(self, stage: str, config: Mapping[str, Any], upstream: Mapping[str, str] | None = None) -> str:
        return make_key(stage, {"v": STAGE_VERSIONS[stage], **config}, upstream)

    @functools.cached_property
    def flat_config(self) -> dict[str, Any]:
        """The resolved config as {dotted path: value}, computed once (resolving it is most of a key's cost)."""
        return flatten(plain(self.cfg))

    def fields(self, rule: str, name: str | None = None) -> dict[str, Any]:
        """The config fields `KEY_RULES[rule]` selects (see `key_fields`)."""
        return select_fields(self.flat_config, rule, name)

    def data_spec(self, split: str) -> dict[str, Any]:
        """Key fields of an ID split, plus a fingerprint of the files when it comes from a folder
        (listed once per invocation: a large ImageFolder costs one stat per file)."""
        if split not in self._data_specs:
            self._data_specs[split] = self._data_spec(split)
        return dict(self._data_specs[split])

    def _data_spec(self, split: str) -> dict[str, Any]:
        spec = self.fields(f"features:id_{split}")
        spec["split"] = split
        from c2ir.data.sources import id_fingerprint

        fingerprint = id_fingerprint(self.cfg.data, split, self.digests)
        if fingerprint:
            spec["content"] = fingerprint
        return spec

    @functools.cached_property
    def checkpoint_sha(self) -> str | None:
        ckpt = self.cfg.model.get("checkpoint")
        if not ckpt:
            return None
        path = Path(str(ckpt)).expanduser()
        if not path.is_file():
            raise C2IRError(f"checkpoint not found: {path}; set model.checkpoint to an existing file")
        return file_sha256(path)

    @property
    def uses_training(self) -> bool:
        """The model comes from the train stage (no checkpoint and no published weights, or fine-tuning)."""
        if bool(self.cfg.train.get("finetune", False)):
            return True
        return not self.cfg.model.get("checkpoint") and not published_weights(self.cfg.model)

    @functools.cached_property
    def train_key(self) -> str:
        spec = self.fields("train")
        from c2ir.data.sources import id_fingerprint

        content = id_fingerprint(self.cfg.data, "train", self.digests)
        if content:
            spec["data.content"] = content
        weights = self.cfg.model.get("weights") if self.cfg.model.get("arch") == "torchvision" else None
        init = self.checkpoint_sha or (f"torchvision:{weights}" if weights else "scratch")  # fine-tuned from
        return self.key("train", spec, {"init": init})

    @functools.cached_property
    def model_key(self) -> str:
        if self.uses_training:
            return self.train_key
        return self.key("model", self.fields("model"), {"checkpoint": self.checkpoint_sha or ""})

    @functools.cached_property
    def model_digest(self) -> str:
        """Content of the model downstream artifacts are built from: the trained weights or the checkpoint."""
        return train.digest(self)

    # ----- the model ------------------------------------------------------------------
    def fresh_model(self) -> nn.Module:
        """An untrained instance of the configured architecture (layer names, the start of training)."""
        return build_classifier(self.cfg.model, int(self.cfg.data.num_classes))

    @functools.cached_property
    def model(self) -> nn.Module:
        """The classifier in eval mode on the device: trained/fine-tuned, or loaded from the checkpoint."""
        return train.classifier(self).to(self.device).eval()

    @functools.cached_property
    def head(self) -> nn.Linear:
        return head_module(self.model, self.cfg.model.get("head"))

    @functools.cached_property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.cfg.model.mean, self.cfg.model.std)

    @functools.cached_property
    def layer_patterns(self) -> list[str]:
        sets = plain(self.cfg.model.layer_sets)
        name = str(self.cfg.layer_set)
        if name not in sets:
            raise C2IRError(f"unknown layer_set={name!r} for this model; choose one of {sorted(sets)}")
        return list(sets[name])

    @functools.cached_property
    def layers(self) -> list[str]:
        # resolved on a fresh (unloaded) instance: no checkpoint load or training needed for names
        return resolve_layers(self.fresh_model(), self.layer_patterns)

    @functools.cached_property
    def capture_layers(self) -> list[str]:
        """Layers a cached forward pass records: with `features.capture=union` (default) every layer of
        every layer set of the model, so a `layer_set=` sweep reuses one pass per dataset; with
        `configured` only `layers`. A set whose patterns match no module of this model is skipped here
        (it fails only when selected)."""
        if str(self.cfg.features.get("capture", "union")) != "union":
            return self.layers
        model = self.fresh_model()
        chosen = set(self.layers)
        for patterns in plain(self.cfg.model.layer_sets).values():
            try:
                chosen.update(resolve_layers(model, list(patterns)))
            except C2IRError:
                continue
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        return sorted(chosen, key=order.__getitem__)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.batch_size)

    @property
    def num_workers(self) -> int:
        """Decoding processes of streamed datasets (`num_workers`, default: one per CPU)."""
        from c2ir.data.loader import default_num_workers

        value = self.cfg.get("num_workers")
        return default_num_workers() if value is None else int(value)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)
