"""What every stage shares: the resolved config, the artifact store, the device, the model.

Cache keys are built here from explicit config subsets, so each stage's key depends on
exactly the fields that change its output (plus the keys of its upstream artifacts).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from c2ir import distributed
from c2ir.cache import ArtifactStore, file_sha256, make_key
from c2ir.data.imageset import Normalizer
from c2ir.device import resolve_device
from c2ir.errors import C2IRError
from c2ir.features import select_layers
from c2ir.models import build_model, head_module, load_checkpoint

log = logging.getLogger(__name__)

# Model config fields that do not change the network's function (excluded from keys).
MODEL_NON_SEMANTIC = {"checkpoint", "trust_checkpoint", "layer_sets", "head", "description"}
# Per stage: a code version; bump it when a stage's output format or algorithm changes.
STAGE_VERSIONS = {"train": 1, "synthesize": 1, "collect_stats": 1, "weight_layers": 1, "features": 1,
                  "odin": 1, "evaluate": 1}


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (for hashing and manifests)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


class Context:
    """Lazily resolved inputs shared by the stages of one invocation."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.store = ArtifactStore(cfg.cache_root)
        self.device = resolve_device(str(cfg.device))
        self.dist = distributed.current()
        torch.set_num_threads(int(cfg.get("threads") or torch.get_num_threads()))

    # ----- config subsets -------------------------------------------------------------
    def key(self, stage: str, config: Mapping[str, Any], upstream: Mapping[str, str] | None = None) -> str:
        return make_key(stage, {"v": STAGE_VERSIONS[stage], **config}, upstream)

    @functools.cached_property
    def model_spec(self) -> dict[str, Any]:
        return {k: v for k, v in plain(self.cfg.model).items() if k not in MODEL_NON_SEMANTIC}

    def data_spec(self, split: str) -> dict[str, Any]:
        d = plain(self.cfg.data)
        fields = ["name", "source", "dataset", "archive", "subdir", "image_size", "channels", "seed",
                  f"{split}_split", f"max_{split}_samples", "num_classes"]
        spec = {k: d.get(k) for k in fields}
        if d.get("root") and d.get("source") in ("imagefolder", "torchvision"):
            spec["root"] = str(Path(str(d["root"])).expanduser())
        spec["split"] = split
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
        """The model comes from the train stage (no checkpoint, or fine-tuning one)."""
        return not self.cfg.model.get("checkpoint") or bool(self.cfg.train.get("finetune", False))

    @functools.cached_property
    def train_key(self) -> str:
        train_cfg = plain(self.cfg.train)
        return self.key("train", {"model": self.model_spec, "data": self.data_spec("train"), "train": train_cfg},
                        {"init": self.checkpoint_sha or "scratch"})

    @functools.cached_property
    def model_key(self) -> str:
        if self.uses_training:
            return self.train_key
        return make_key("model", {"model": self.model_spec}, {"checkpoint": self.checkpoint_sha or ""})

    # ----- the model ------------------------------------------------------------------
    def fresh_model(self) -> nn.Module:
        cfg = self.cfg
        if int(cfg.model.num_classes) != int(cfg.data.num_classes):
            raise C2IRError(
                f"model.num_classes={cfg.model.num_classes} but data.num_classes={cfg.data.num_classes}; "
                "they must agree (choose the model config trained on this data)"
            )
        return build_model(cfg.model)

    @functools.cached_property
    def model(self) -> nn.Module:
        """The classifier in eval mode on the device: trained/fine-tuned, or loaded from the checkpoint."""
        if self.uses_training:
            from c2ir.stages.train import ensure_trained, load_trained

            model = load_trained(self, ensure_trained(self))
        else:
            model = self.fresh_model()
            load_checkpoint(model, self.cfg.model, str(self.cfg.model.checkpoint))
        head = head_module(model, self.cfg.model.get("head"))
        if head.out_features != int(self.cfg.data.num_classes):
            raise C2IRError(
                f"the model predicts {head.out_features} classes but data.num_classes={self.cfg.data.num_classes}; "
                "use a model trained on this data"
            )
        return model.to(self.device).eval()

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
        return select_layers(self.fresh_model(), self.layer_patterns)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.batch_size)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)
