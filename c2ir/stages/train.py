"""Stage `train`: train (or fine-tune from `model.checkpoint`) the classifier on the ID train split.

The loop lives in `c2ir.training`; this stage builds the model, loads the data, and caches
the result under the train key (resuming from the key's partial folder after a crash).
`classifier(ctx)` is the model every later stage runs: this stage's output, or
`model.checkpoint` as given when nothing is trained. (This module takes a RunContext but does
not import stages/common.py at run time, so common.py can call it without an import cycle.)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from c2ir.cache import Artifact, atomic_save_tensors, atomic_write_json
from c2ir.data import load_id, materialize
from c2ir.errors import C2IRError
from c2ir.models import load_checkpoint, published_weights
from c2ir.models.loading import check_finite_weights, load_classifier
from c2ir.training import TrainConfig, train_classifier
from c2ir.validation import check_every_class

if TYPE_CHECKING:
    from c2ir.stages.common import RunContext

log = logging.getLogger(__name__)


def train_config(ctx: "RunContext") -> TrainConfig:
    t, d = ctx.cfg.train, ctx.cfg.data
    return TrainConfig(epochs=int(t.epochs), batch_size=int(t.batch_size), lr=float(t.lr), warmup=float(t.warmup),
                       weight_decay=float(t.weight_decay), pad=max(1, int(d.image_size) // 8) if t.get("pad") is None else int(t.pad),
                       flip=bool(d.get("flip_invariant", True)), seed=ctx.seed)


def train_model(ctx: "RunContext", work: Path) -> tuple[nn.Module, list[dict]]:
    """Train with per-epoch resumable checkpoints in `work`; returns the model and its history."""
    cfg = ctx.cfg
    torch.manual_seed(ctx.seed)  # the initial weights are part of the result: seed them
    model = ctx.fresh_model()
    if cfg.model.get("checkpoint"):
        load_checkpoint(model, cfg.model, str(cfg.model.checkpoint))
        check_finite_weights(model, f"checkpoint {cfg.model.checkpoint}")
        log.info("fine-tuning from %s", cfg.model.checkpoint)
    # training draws random batches and augments whole tensors: both splits are held in memory
    train, test = (materialize(load_id(cfg.data, s), ctx.batch_size, ctx.num_workers) for s in ("train", "test"))
    check_every_class(train.labels, int(cfg.data.num_classes), f"{cfg.data.name}-train")
    return train_classifier(model, train, test, ctx.normalizer,
                            train_config(ctx), work, ctx.device, ctx.batch_size)


def ensure(ctx: "RunContext") -> Artifact:
    art_key = ctx.train_key
    with ctx.store.resumable("train", art_key) as work:  # a failed build leaves no empty partial folder

        def build(out: Path) -> dict:
            model, history = train_model(ctx, work)
            atomic_save_tensors(out / "model.safetensors", model.state_dict())
            atomic_write_json(out / "history.json", history)
            return {"test_acc": history[-1]["test_acc"] if history else None}

        art = ctx.store.get_or_create("train", art_key, build, config=ctx.fields("train"), seed=ctx.seed)
    shutil.rmtree(work, ignore_errors=True)
    return art


def load(ctx: "RunContext", art: Artifact) -> nn.Module:
    """The trained classifier of the artifact `art` (on the CPU, in training mode as built)."""
    return load_classifier(ctx.cfg.model, int(ctx.cfg.data.num_classes), state=art.tensors("model.safetensors"))


def classifier(ctx: "RunContext") -> nn.Module:
    """The model downstream stages run: trained/fine-tuned here, or `model.checkpoint` as given."""
    if ctx.uses_training:
        return load(ctx, ensure(ctx))
    # no checkpoint: a torchvision model with its published weights, used as it is
    return load_classifier(ctx.cfg.model, int(ctx.cfg.data.num_classes), checkpoint=ctx.cfg.model.get("checkpoint"))


def digest(ctx: "RunContext") -> str:
    """Content of the model downstream artifacts are built from: the trained weights or the checkpoint."""
    if ctx.uses_training:
        return ensure(ctx).digest
    if ctx.checkpoint_sha is None:  # torchvision's published weights, identified by name
        return f"torchvision:{ctx.cfg.model.name}:{published_weights(ctx.cfg.model)}"
    return f"checkpoint:{ctx.checkpoint_sha}"


def run(cfg) -> None:
    from c2ir.stages.common import RunContext

    ctx = RunContext(cfg)
    if cfg.model.get("checkpoint") and not cfg.train.get("finetune", False):
        raise C2IRError("model.checkpoint is set: pass train.finetune=true to fine-tune it (downstream stages then use the result)")
    art = ensure(ctx)
    log.info("train: model at %s (test accuracy %.4f)", art.path, art.manifest.get("test_acc") or float("nan"))
