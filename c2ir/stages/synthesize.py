"""Stage `synthesize`: invert the fixed classifier into class-conditional impressions (DeepInversion).

Batches are independent (own seed, own class-balanced targets). On disk each finished batch is
saved atomically in the key's partial folder, so an interrupted run resumes at the first missing
batch; under torchrun, rank r computes batches r, r+W, r+2W, ... and rank 0 assembles and
publishes the artifact once every batch exists. In memory (the API) the batches are kept as
they are made. Either way the impressions are the same.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from c2ir.cache import atomic_save_tensors
from c2ir.data.imageset import Normalizer
from c2ir.extraction import batches
from c2ir.graph import Job, KeyRule, Node, Step, Use, resolve
from c2ir.impressions import BatchResult, SynthConfig, batch_seed, batch_targets, impression_grid, num_batches, synthesize_batch
from c2ir.models.state import frozen_eval
from c2ir.stages.job import normalizer
from c2ir.stages.train import MODEL, classifier

log = logging.getLogger(__name__)

# synth.seed (default: ${seed}) draws the starting noise, jitter and flips
SYNTH_RULE = KeyRule(("synth", "data.num_classes", "data.channels", "data.image_size", "data.jitter",
                      "data.flip_invariant"))


@dataclass
class Impressions:
    """Synthesised (or given) impressions: pixel images in [0, 1] (N, C, H, W), their target classes, and
    the classes the model predicts for them (None where not computed)."""

    images: torch.Tensor
    targets: torch.Tensor
    predicted: torch.Tensor | None = None


def _batch_path(work: Path, b: int) -> Path:
    return work / f"batch_{b:05d}.safetensors"


def batch_ok(path: Path) -> bool:
    """A finished batch file that loads with the expected tensors; a damaged one is deleted (and recomputed)."""
    try:
        t = load_file(str(path))
        if {"images", "targets"} <= set(t) and len(t["images"]) == len(t["targets"]) > 0:
            return True
        problem = "missing tensors"
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        problem = f"{type(exc).__name__}: {str(exc)[:80]}"
    log.warning("synthesize: damaged batch file %s (%s); discarding and recomputing it", path, problem)
    path.unlink(missing_ok=True)
    return False


def synthesize_multires(model: nn.Module, normalizer: Normalizer, targets: torch.Tensor, shape: tuple[int, int, int],
                        sc: SynthConfig, warmup: int, seed: int, device: torch.device, **kw: Any) -> BatchResult:
    """DeepInversion's multi-resolution schedule (their ImageNet setting 0): `warmup` iterations where the
    model sees the images 2x average-pooled (jitter halved), then `sc.iterations` at full size, each
    stage with a fresh Adam. warmup=0 is the plain single-resolution synthesis."""
    if warmup <= 0:
        return synthesize_batch(model, normalizer, targets, shape, sc, seed, device, **kw)
    desc = kw.pop("desc", "synthesize")
    low = nn.Sequential(nn.AvgPool2d(2), model)
    first = synthesize_batch(low, normalizer, targets, shape, dataclasses.replace(sc, iterations=warmup, jitter=sc.jitter // 2),
                             seed, device, desc=f"{desc} (half resolution)", **kw)
    second = synthesize_batch(model, normalizer, targets, shape, sc, seed, device, desc=desc,
                              init=normalizer(first.images), **kw)
    curves = {k: torch.cat([first.curves[k], v]) for k, v in second.curves.items()}
    return BatchResult(second.images, second.targets, curves)


def compute_batches(step: Step) -> dict[int, dict[str, torch.Tensor]]:
    """This rank's batches: those finished in the partial folder are left there (resuming), the others are
    synthesised and saved there (on disk) or returned (in memory)."""
    job = step.job
    synth = job.cfg.synth
    sc = SynthConfig.from_cfg(synth)
    k = int(job.cfg.data.num_classes)
    n_batches = num_batches(k, sc.per_class, sc.batch_size)
    model = classifier(job)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(synth.get("autocast", "none")))
    channels_last = bool(synth.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if synth.get("compile", False):
        model = torch.compile(model)
    if step.work is not None:
        step.work.mkdir(parents=True, exist_ok=True)
    kept: dict[int, dict[str, torch.Tensor]] = {}
    for b in range(job.dist.rank, n_batches, job.dist.world):
        path = None if step.work is None else _batch_path(step.work, b)
        if path is not None and path.is_file() and batch_ok(path):
            log.info("synthesize: batch %d/%d already done (resuming)", b + 1, n_batches)
            continue
        targets = batch_targets(k, sc.per_class, sc.batch_size, b)
        res = synthesize_multires(model, normalizer(job), targets, job.input_shape, sc,
                                  int(synth.get("warmup_iterations") or 0), batch_seed(sc.seed, b), job.device,
                                  desc=f"synthesize batch {b + 1}/{n_batches}", autocast_dtype=autocast,
                                  channels_last=channels_last)
        c = res.curves
        log.info("synthesize batch %d/%d: loss %.3f -> %.3f (ce %.3f, bn %.3f -> %.3f)", b + 1, n_batches,
                 float(c["total"][0]), float(c["total"][-1]), float(c["ce"][-1]), float(c["bn"][0]), float(c["bn"][-1]))
        tensors = {"images": res.images, "targets": res.targets, **{f"curve/{n}": v for n, v in c.items()}}
        if path is None:
            kept[b] = tensors
        else:
            atomic_save_tensors(path, tensors)
    return kept


def _build(step: Step, out: Any) -> dict:
    """Every batch (computed now or found finished), assembled into impressions, loss curves, target share, grid."""
    job = step.job
    kept = compute_batches(step)
    sc = SynthConfig.from_cfg(job.cfg.synth)
    k = int(job.cfg.data.num_classes)
    n_batches = num_batches(k, sc.per_class, sc.batch_size)
    parts = [kept[b] if b in kept else load_file(str(_batch_path(step.work, b))) for b in range(n_batches)]
    images = torch.cat([p["images"] for p in parts])
    targets = torch.cat([p["targets"] for p in parts])
    curves = {n[6:]: torch.stack([p[n] for p in parts]) for n in parts[0] if n.startswith("curve/")}
    model, norm = classifier(job), normalizer(job)
    with torch.no_grad(), frozen_eval(model):   # a borrowed model (the API's) is left as it came
        preds = torch.cat([model(norm(images[span].to(job.device))).argmax(1).cpu()
                           for span in batches(len(images), job.batch_size)])
    share = float((preds == targets).float().mean())
    out.save_tensors("impressions.safetensors", {"images": images, "targets": targets, "predicted": preds})
    out.save_tensors("curves.safetensors", curves)
    bn_first, bn_last = curves["bn"][:, 0].mean().item(), curves["bn"][:, -1].mean().item()
    summary = {
        "count": len(images), "per_class": sc.per_class, "batches": n_batches,
        "target_share": share,
        "per_class_target_share": [float((preds[targets == c] == c).float().mean()) for c in range(k)],
        "bn_loss_first": bn_first, "bn_loss_last": bn_last,
        "ce_last": curves["ce"][:, -1].mean().item(),
    }
    out.save_json("summary.json", summary)
    grid = out.file("impressions_grid.png")
    if grid is not None:
        _save_grid(impression_grid(images, targets, k), grid)
    log.info("synthesize: %d impressions, %.1f%% assigned to their target class; BN loss %.3f -> %.3f",
             len(images), 100 * share, bn_first, bn_last)
    return {"summary": summary}


def _save_grid(grid: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    scale = max(1, 256 // max(arr.shape[:2]))
    img = Image.fromarray(np.ascontiguousarray(arr))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def _load(art: Any, job: Job, _: Any) -> Impressions:
    t = art.tensors("impressions.safetensors")
    return Impressions(t["images"], t["targets"], t.get("predicted"))


SYNTHESIZE = Node("synthesize", version=2, rule=SYNTH_RULE, uses=lambda job, _: {"model": Use(MODEL)},
                  build=_build, load=_load, seed=lambda job: int(job.cfg.synth.seed), resumable=True,
                  prepare=compute_batches)


def run(job: Job) -> dict:
    art = resolve(SYNTHESIZE, job).artifact
    s = art.json("summary.json")
    log.info("synthesize: %d impressions at %s (%.1f%% assigned to target)", s["count"], art.path, 100 * s["target_share"])
    return {"path": str(art.path), **s}
