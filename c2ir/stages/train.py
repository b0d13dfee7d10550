"""Stage `train` and the model every later node runs.

TRAIN trains (or fine-tunes from `model.checkpoint`) the classifier on the ID train split,
resuming from its partial folder after a crash (the loop is c2ir.training). MODEL is the
classifier downstream nodes read: TRAIN's weights, or `model.checkpoint` / torchvision's
published weights as given (a source: keyed by the checkpoint's content, nothing stored).
The API gives MODEL instead (the caller's model).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from c2ir.cache import file_sha256, make_key
from c2ir.data import load_id, materialize
from c2ir.errors import C2IRError
from c2ir.graph import Job, KeyRule, Node, Resolved, Step, key_fields, key_of, resolve
from c2ir.inputs import check_every_class
from c2ir.models import head_module, load_checkpoint, published_weights
from c2ir.models.loading import build_classifier, check_finite_weights, load_classifier
from c2ir.schema import TrainConfig
from c2ir.stages.job import digests, normalizer, num_workers
from c2ir.training import train_classifier

log = logging.getLogger(__name__)

# ID data fields that decide which images a split holds (folder sources add a content fingerprint).
DATA_FIELDS = ("data.name", "data.source", "data.dataset", "data.root", "data.archive", "data.subdir", "data.image_size",
               "data.channels", "data.seed", "data.num_classes", "data.mean", "data.std", "data.resize", "data.data_dir")
# which activations (and which `penultimate`) are read: not the network's function
LAYER_FIELDS = ("layer_set", "model.layer_sets", "model.head")
# `seed` draws the initial weights and the batch order/augmentation
TRAIN_RULE = KeyRule(("seed", "model", "train", *DATA_FIELDS, "data.train_split", "data.max_train_samples",
                      "data.flip_invariant"), exclude=LAYER_FIELDS)
MODEL_RULE = KeyRule(("model",), exclude=LAYER_FIELDS)   # a checkpoint used as it is (no training): no seed


def uses_training(cfg: Any) -> bool:
    """The model comes from the train stage (no checkpoint and no published weights, or fine-tuning)."""
    if bool(cfg.train.finetune):
        return True
    return not cfg.model.get("checkpoint") and not published_weights(cfg.model)


def checkpoint_sha(job: Job) -> str | None:
    """SHA-256 of `model.checkpoint` (hashed once per job), the checkpoint's identity in keys."""
    ckpt = job.cfg.model.get("checkpoint")
    if not ckpt:
        return None
    if "checkpoint_sha" not in job.memo:
        path = Path(str(ckpt)).expanduser()
        if not path.is_file():
            raise C2IRError(f"checkpoint not found: {path}; set model.checkpoint to an existing file")
        job.memo["checkpoint_sha"] = file_sha256(path)
    return job.memo["checkpoint_sha"]


def _train_spec(job: Job, _: Any) -> dict[str, Any]:
    from c2ir.data.sources import id_fingerprint

    content = id_fingerprint(job.cfg.data, "train", digests(job))
    return {"data.content": content} if content else {}


def _init(job: Job, _: Any) -> dict[str, str]:
    """What training starts from: the checkpoint fine-tuned, torchvision's weights, or scratch."""
    weights = job.cfg.model.get("weights") if job.cfg.model.arch == "torchvision" else None
    return {"init": checkpoint_sha(job) or (f"torchvision:{weights}" if weights else "scratch")}


def train_model(job: Job, work: Path) -> tuple[nn.Module, list[dict]]:
    """Train with per-epoch resumable checkpoints in `work`; returns the model and its history."""
    cfg = job.cfg
    torch.manual_seed(job.seed)  # the initial weights are part of the result: seed them
    model = build_classifier(cfg.model, int(cfg.data.num_classes))
    if cfg.model.get("checkpoint"):
        load_checkpoint(model, cfg.model, str(cfg.model.checkpoint))
        check_finite_weights(model, f"checkpoint {cfg.model.checkpoint}")
        log.info("fine-tuning from %s", cfg.model.checkpoint)
    # training draws random batches and augments whole tensors: both splits are held in memory
    train, test = (materialize(load_id(cfg.data, s), job.batch_size, num_workers(job)) for s in ("train", "test"))
    check_every_class(train.labels, int(cfg.data.num_classes), f"{cfg.data.name}-train")
    tc = TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    return train_classifier(model, train, test, normalizer(job), tc, work, job.device, job.batch_size,
                            flip=bool(cfg.data.get("flip_invariant", True)), seed=job.seed)


def _build(step: Step, out: Any) -> dict:
    model, history = train_model(step.job, step.work)
    out.save_tensors("model.safetensors", model.state_dict())
    out.save_json("history.json", history)
    return {"test_acc": history[-1]["test_acc"] if history else None}


def _load(art: Any, job: Job, _: Any) -> nn.Module:
    """The trained classifier (on the CPU, in training mode as built)."""
    return load_classifier(job.cfg.model, int(job.cfg.data.num_classes), state=art.tensors("model.safetensors"))


TRAIN = Node("train", version=2, rule=TRAIN_RULE, spec=_train_spec, upstream=_init, build=_build, load=_load,
             seed=lambda job: job.seed, resumable=True)


def _model_key(job: Job, _: Any) -> str:
    if uses_training(job.cfg):
        return key_of(TRAIN, job)
    return make_key("model", {"v": 2, **key_fields(job.cfg, MODEL_RULE)}, {"checkpoint": checkpoint_sha(job) or ""})


def _model(job: Job, _: Any) -> Resolved:
    cfg, device = job.cfg, job.device
    if uses_training(cfg):
        trained = resolve(TRAIN, job)
        return Resolved(trained.key, trained.digest, trained.artifact, lambda: trained.value.to(device).eval())
    sha = checkpoint_sha(job)
    key = _model_key(job, None)
    # the content downstream artifacts are built from; published weights are identified by name
    digest = f"checkpoint:{sha}" if sha else f"torchvision:{cfg.model.name}:{published_weights(cfg.model)}"
    return Resolved(key, digest, None, lambda: load_classifier(cfg.model, int(cfg.data.num_classes),
                                                               checkpoint=cfg.model.get("checkpoint")).to(device).eval())


MODEL = Node("model", source=_model, source_key=_model_key)


def classifier(job: Job) -> nn.Module:
    """The classifier in eval mode on the job's device (MODEL's value)."""
    return resolve(MODEL, job).value


def head(job: Job) -> nn.Linear:
    """The model's final linear layer (`model.head`, or the last Linear)."""
    return head_module(classifier(job), job.cfg.model.get("head"))


def run(job: Job) -> dict:
    cfg = job.cfg
    if cfg.model.get("checkpoint") and not cfg.train.finetune:
        raise C2IRError("model.checkpoint is set: pass train.finetune=true to fine-tune it (downstream stages then use the result)")
    art = resolve(TRAIN, job).artifact
    log.info("train: model at %s (test accuracy %.4f)", art.path, art.manifest.get("test_acc") or float("nan"))
    return {"path": str(art.path), "test_acc": art.manifest.get("test_acc")}


