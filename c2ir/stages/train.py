"""Stage `train`: train (or fine-tune from `model.checkpoint`) the classifier on the ID train split.

SGD with Nesterov momentum and a one-cycle (warm-up + cosine) learning rate, pad-crop
and (for flip-invariant data) horizontal-flip augmentation. Every epoch's state is saved
atomically in the key's partial folder; a killed run resumes from the last finished
epoch and ends bitwise equal (on CPU) to an uninterrupted one, because shuffling and
augmentation draw from generators seeded by (seed, epoch) and the learning rate is a
function of the step alone.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from c2ir.cache import Artifact, atomic_save_tensors, atomic_write_json
from c2ir.data import load_id
from c2ir.data.imageset import ImageSet
from c2ir.errors import C2IRError
from c2ir.models import load_checkpoint
from c2ir.stages.common import Context, check_finite_weights, key_fields

log = logging.getLogger(__name__)


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """One-cycle schedule: linear warm-up to `peak`, then cosine decay to zero."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * peak * (1 + math.cos(math.pi * min(progress, 1.0)))


def augment(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random pad-crop (zero padding) and optional horizontal flip of a uint8 batch."""
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=g) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, ctx: Context, data: ImageSet) -> float:
    model.eval()
    correct = 0
    for s in range(0, len(data), ctx.batch_size):
        x = ctx.normalizer(data.images[s:s + ctx.batch_size].to(ctx.device))
        correct += int((model(x).argmax(1).cpu() == data.labels[s:s + ctx.batch_size]).sum())
    return correct / max(len(data), 1)


def _opt_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        if st.get("momentum_buffer") is not None:
            out[f"opt/{i}"] = st["momentum_buffer"]
    return out


def _load_opt_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    for k, v in tensors.items():
        if k.startswith("opt/"):
            sd["state"][int(k[4:])] = {"momentum_buffer": v}
    opt.load_state_dict(sd)


def train_model(ctx: Context, work: Path) -> tuple[nn.Module, list[dict]]:
    """Train with per-epoch resumable checkpoints in `work`; returns the model and its history."""
    cfg, tcfg = ctx.cfg, ctx.cfg.train
    torch.manual_seed(ctx.seed)  # the initial weights are part of the result: seed them
    model = ctx.fresh_model()
    if cfg.model.get("checkpoint"):
        load_checkpoint(model, cfg.model, str(cfg.model.checkpoint))
        check_finite_weights(model, f"checkpoint {cfg.model.checkpoint}")
        log.info("fine-tuning from %s", cfg.model.checkpoint)
    model.to(ctx.device)
    train = load_id(cfg.data, "train")
    test = load_id(cfg.data, "test")
    epochs, bs = int(tcfg.epochs), int(tcfg.batch_size)
    steps_per_epoch = math.ceil(len(train) / bs)
    total = epochs * steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=float(tcfg.lr), momentum=0.9, nesterov=True,
                          weight_decay=float(tcfg.weight_decay))
    history: list[dict] = []
    start_epoch = 0
    work.mkdir(parents=True, exist_ok=True)
    done = sorted(work.glob("epoch_*.safetensors"))
    if done:
        last = done[-1]
        try:
            tensors = load_file(str(last))
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
            _load_opt_state(opt, tensors)
            meta = json.loads(last.with_suffix(".json").read_text())
            start_epoch, history = int(meta["epoch"]) + 1, meta["history"]
            log.info("train: resuming after epoch %d from %s", start_epoch, last.name)
        except Exception as exc:  # noqa: BLE001 - a damaged resume file: start over rather than fail forever
            log.warning("train: damaged resume state %s (%s: %s); discarding it and training from the start",
                        last.name, type(exc).__name__, str(exc)[:80])
            for f in work.glob("epoch_*"):
                f.unlink(missing_ok=True)
            torch.manual_seed(ctx.seed)
            model = ctx.fresh_model().to(ctx.device)
            if cfg.model.get("checkpoint"):
                load_checkpoint(model, cfg.model, str(cfg.model.checkpoint))
            opt = torch.optim.SGD(model.parameters(), lr=float(tcfg.lr), momentum=0.9, nesterov=True,
                                  weight_decay=float(tcfg.weight_decay))
            start_epoch, history = 0, []
    pad = int(tcfg.get("pad", max(1, int(cfg.data.image_size) // 8)))
    flip = bool(cfg.data.get("flip_invariant", True))
    for epoch in range(start_epoch, epochs):
        model.train()
        g = torch.Generator().manual_seed(ctx.seed * 10_007 + epoch)
        order = torch.randperm(len(train), generator=g)
        seen, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"train epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not sys.stderr.isatty())
        for i in bar:
            idx = order[i * bs:(i + 1) * bs]
            x = ctx.normalizer(augment(train.images[idx], pad, flip, g).to(ctx.device))
            y = train.labels[idx].to(ctx.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i, total, float(tcfg.lr), float(tcfg.warmup))
            out = model(x)
            loss = F.cross_entropy(out, y)
            if not torch.isfinite(loss):
                raise C2IRError(f"training diverged (loss {loss.item()}) in epoch {epoch + 1}; lower train.lr (now {tcfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            correct += int((out.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        test_acc = evaluate_accuracy(model, ctx, test)
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "test_acc": test_acc})
        log.info("train epoch %d/%d: loss %.4f, train acc %.4f, test acc %.4f",
                 epoch + 1, epochs, loss_sum / seen, correct / seen, test_acc)
        state = {f"model/{k}": v for k, v in model.state_dict().items()}
        path = work / f"epoch_{epoch:04d}.safetensors"
        atomic_write_json(path.with_suffix(".json"), {"epoch": epoch, "history": history})
        atomic_save_tensors(path, {**state, **_opt_state(opt)})
        for old in sorted(work.glob("epoch_*.safetensors"))[:-1]:  # keep only the newest epoch
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return model.eval(), history


def ensure_trained(ctx: Context) -> Artifact:
    key = ctx.train_key
    work = ctx.store.partial_dir("train", key)

    def build(out: Path) -> dict:
        model, history = train_model(ctx, work)
        atomic_save_tensors(out / "model.safetensors", model.state_dict())
        atomic_write_json(out / "history.json", history)
        return {"test_acc": history[-1]["test_acc"] if history else None}

    art = ctx.store.get_or_create("train", key, build, config=key_fields(ctx.cfg, "train"), seed=ctx.seed)
    shutil.rmtree(work, ignore_errors=True)
    return art


def load_trained(ctx: Context, art: Artifact) -> nn.Module:
    model = ctx.fresh_model()
    model.load_state_dict(art.tensors("model.safetensors"))
    return model


def run(cfg) -> None:
    ctx = Context(cfg)
    if cfg.model.get("checkpoint") and not cfg.train.get("finetune", False):
        raise C2IRError("model.checkpoint is set: pass train.finetune=true to fine-tune it (downstream stages then use the result)")
    art = ensure_trained(ctx)
    log.info("train: model at %s (test accuracy %.4f)", art.path, art.manifest.get("test_acc") or float("nan"))
