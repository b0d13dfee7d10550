"""Training (or fine-tuning) a classifier: the loop, resumable epoch by epoch.

SGD with Nesterov momentum and a one-cycle (warm-up + cosine) learning rate, pad-crop
and (for flip-invariant data) horizontal-flip augmentation. With a `work` folder, every
epoch's state is saved atomically there with its content hash (`cache.save_verified`); a
killed run resumes from the last finished epoch and ends bitwise equal (on CPU) to an uninterrupted one, because shuffling and
augmentation draw from generators seeded by (seed, epoch) and the learning rate is a
function of the step alone. The `train` stage adds the cache around it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from c2ir.cache import discard_verified, load_verified, save_verified
from c2ir.data.imageset import ImageSet, Normalizer
from c2ir.errors import C2IRError
from c2ir.schema import TrainConfig
from c2ir.sgd import NesterovSGD
from c2ir.extraction import batches

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
def evaluate_accuracy(model: nn.Module, normalizer: Normalizer, data: ImageSet, batch_size: int = 256,
                      device: torch.device | str = "cpu") -> float:
    model.eval()
    correct = 0
    for span in batches(len(data), batch_size):
        x = normalizer(data.images[span].to(device))
        correct += int((model(x).argmax(1).cpu() == data.labels[span]).sum())
    return correct / max(len(data), 1)


def _opt_state(opt: torch.optim.Optimizer | NesterovSGD) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        if st.get("momentum_buffer") is not None:
            out[f"opt/{i}"] = st["momentum_buffer"]
    return out


def _load_opt_state(opt: torch.optim.Optimizer | NesterovSGD, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    for k, v in tensors.items():
        if k.startswith("opt/"):
            sd["state"][int(k[4:])] = {"momentum_buffer": v}
    opt.load_state_dict(sd)


def _optimizer(model: nn.Module, tc: TrainConfig, device: torch.device | str = "cpu") -> torch.optim.Optimizer | NesterovSGD:
    """SGD, Nesterov momentum 0.9. On CPU `c2ir.sgd.NesterovSGD` (torch's single-tensor update bit for bit,
    without the ~2 s `torch._dynamo` import of `torch.optim`); elsewhere `torch.optim.SGD`, whose default
    multi-tensor kernels are faster there (NesterovSGD would run, one kernel per parameter and operation) and
    whose import is small beside an accelerator's start-up."""
    if torch.device(device).type == "cpu":
        return NesterovSGD(model.parameters(), lr=float(tc.lr), momentum=0.9, weight_decay=float(tc.weight_decay))
    return torch.optim.SGD(model.parameters(), lr=float(tc.lr), momentum=0.9, nesterov=True,
                           weight_decay=float(tc.weight_decay))


def train_classifier(model: nn.Module, train: ImageSet, test: ImageSet, normalizer: Normalizer, tc: TrainConfig,
                     work: Path, device: torch.device | str = "cpu", eval_batch_size: int = 256, *, flip: bool = True,
                     seed: int = 0) -> tuple[nn.Module, list[dict]]:
    """Train `model` in place with per-epoch resumable checkpoints in `work`; returns it (eval mode) and its history.
    `flip`: horizontal-flip augmentation (flip-invariant data); `seed` draws the batch order and augmentation."""
    model.to(device)
    pad = tc.crop_pad(train.images.shape[-1])
    epochs, bs = int(tc.epochs), int(tc.batch_size)
    steps_per_epoch = math.ceil(len(train) / bs)
    total = epochs * steps_per_epoch
    opt = _optimizer(model, tc, device)
    history: list[dict] = []
    start_epoch = 0
    done = sorted(work.glob("epoch_*.safetensors"))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if done else {}
    for last in reversed(done):  # the newest epoch whose file is verified (a kill may leave the newest unfinished)
        try:  # verified like an artifact (content hash) before any of it is used
            tensors, meta = load_verified(last)
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
            _load_opt_state(opt, tensors)
            start_epoch, history = int(meta["epoch"]) + 1, json.loads(meta["history"])
            if not 0 < start_epoch <= epochs or len(history) != start_epoch:
                raise ValueError(f"epoch {start_epoch} of {epochs} with {len(history)} history entries")
            log.info("train: %d of %d epochs done; resuming from %s", start_epoch, epochs, last.name)
            break
        except Exception as exc:  # noqa: BLE001 - a damaged resume file: discard it rather than fail forever
            log.warning("train: damaged resume state %s (%s: %s); discarding it", last.name, type(exc).__name__,
                        str(exc)[:80])
            discard_verified(last)
            model.load_state_dict(initial)  # the same initial weights as an uninterrupted run
            opt = _optimizer(model, tc, device)
            start_epoch, history = 0, []
    if done and start_epoch == 0:
        log.warning("train: no usable resume state in %s; training from the start", work)
    for epoch in range(start_epoch, epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 10_007 + epoch)
        order = torch.randperm(len(train), generator=g)
        seen, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"train epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not sys.stderr.isatty())
        for i in bar:
            idx = order[i * bs:(i + 1) * bs]
            x = normalizer(augment(train.images[idx], pad, flip, g).to(device))
            y = train.labels[idx].to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i, total, float(tc.lr), float(tc.warmup))
            out = model(x)
            loss = F.cross_entropy(out, y)
            if not torch.isfinite(loss):
                raise C2IRError(f"training diverged (loss {loss.item()}) in epoch {epoch + 1}; lower train.lr (now {tc.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
            correct += int((out.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        test_acc = evaluate_accuracy(model, normalizer, test, eval_batch_size, device)
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen, "test_acc": test_acc})
        log.info("train epoch %d/%d: loss %.4f, train acc %.4f, test acc %.4f",
                 epoch + 1, epochs, loss_sum / seen, correct / seen, test_acc)
        state = {f"model/{k}": v for k, v in model.state_dict().items()}
        path = work / f"epoch_{epoch:04d}.safetensors"
        save_verified(path, {**state, **_opt_state(opt)}, {"epoch": str(epoch), "history": json.dumps(history)})
        for old in sorted(work.glob("epoch_*.safetensors"))[:-1]:  # keep only the newest epoch
            discard_verified(old)
    return model.eval(), history
