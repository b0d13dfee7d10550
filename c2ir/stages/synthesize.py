"""Stage `synthesize`: invert the fixed classifier into class-conditional impressions (DeepInversion).

Batches are independent (own seed, own class-balanced targets). On disk each finished batch is
saved in the key's partial folder with its content hash (`cache.save_verified`), so an interrupted
run resumes at the first missing batch and a damaged batch is recomputed, never assembled; under
torchrun, rank r computes batches r, r+W, r+2W, ... and rank 0 assembles and publishes the artifact
once every batch exists. In memory (the API) the batches are kept as they are made. Either way the
impressions are the same, behind one progress bar for all of this rank's batches.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from c2ir.cache import save_verified
from c2ir.errors import C2IRError
from c2ir.extraction import batches
from c2ir.graph import Job, KeyRule, Node, Step, Use, resolve
from c2ir.impressions import (SynthConfig, batch_seed, batch_targets, impression_grid, last_values, load_batch,
                              num_batches, save_grid, stack_curves, synthesize_batch)
from c2ir.models.state import frozen_eval
from c2ir.stages.job import normalizer
from c2ir.stages.train import MODEL, classifier
from c2ir.synth_schedule import phase_iterations, progress_plan, synthesis_cost

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


def _spec(job: Job, _: Any) -> dict[str, Any]:
    """Derived key entries: before issue 20 a warm-up always ran at half resolution; on images too small for
    that it now runs at full size, so such impressions must not share the key of the former half-resolution ones."""
    sc, size = job.cfg.synth, min(job.input_shape[-2:])
    warmup = int(sc.get("warmup_iterations") or 0)
    low, _ = phase_iterations(size, int(sc.iterations), warmup, int(sc.get("warmup_min_size") or 16))
    return {"synth.warmup_at_full_size": True} if warmup > 0 and low == 0 else {}


def _batch_path(work: Path, b: int) -> Path:
    return work / f"batch_{b:05d}.safetensors"


def compute_batches(step: Step) -> dict[int, dict[str, torch.Tensor]]:
    """This rank's batches, behind one progress bar (impressions done of this rank's total, iterations per
    second, time left; resumed batches count as done): those finished in the partial folder are left there
    (resuming), the others are synthesised and saved there (on disk) or returned (in memory)."""
    job = step.job
    synth = job.cfg.synth
    sc = SynthConfig.from_cfg(synth)
    k = int(job.cfg.data.num_classes)
    n_batches = num_batches(k, sc.per_class, sc.batch_size)
    shape = job.input_shape
    model = classifier(job)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(synth.get("autocast", "none")))
    channels_last = bool(synth.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if synth.get("compile", False):
        model = torch.compile(model)
    mine = list(range(job.dist.rank, n_batches, job.dist.world))
    targets = {b: batch_targets(k, sc.per_class, sc.batch_size, b) for b in mine}
    done = [step.work is not None and _batch_path(step.work, b).exists()
            and load_batch(_batch_path(step.work, b), targets[b], shape) is not None for b in mine]
    plan = progress_plan([len(targets[b]) for b in mine], done,
                         sum(phase_iterations(min(shape[-2:]), sc.iterations, sc.warmup_iterations, sc.warmup_min_size)))
    made = plan.done_impressions
    kept: dict[int, dict[str, torch.Tensor]] = {}
    bar = tqdm(total=plan.total_iterations, initial=plan.done_iterations, unit="it", dynamic_ncols=True,
               desc=f"synthesize {made}/{plan.total_impressions} impressions", disable=not sys.stderr.isatty())
    with bar:
        for b, finished in zip(mine, done):
            if finished:
                log.info("synthesize: batch %d/%d already done (resuming)", b + 1, n_batches)
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            res = synthesize_batch(model, normalizer(job), targets[b], shape, sc, batch_seed(sc.seed, b), job.device,
                                   desc=f"synthesize batch {b + 1}/{n_batches}", autocast_dtype=autocast,
                                   channels_last=channels_last, progress=bar)
            made += len(targets[b])
            bar.set_description_str(f"synthesize {made}/{plan.total_impressions} impressions")
            c = res.curves
            log.info("synthesize batch %d/%d: loss %.3f -> %.3f (ce %.3f, bn %.3f -> %.3f) in %d iterations", b + 1,
                     n_batches, float(c["total"][0]), float(c["total"][-1]), float(c["ce"][-1]), float(c["bn"][0]),
                     float(c["bn"][-1]), res.iterations)
            timing = torch.tensor([time.perf_counter() - wall, time.process_time() - cpu], dtype=torch.float64)
            tensors = {"images": res.images, "targets": res.targets, "low_iterations": torch.tensor([res.low_iterations]),
                       "timing": timing,  # wall and CPU seconds of this batch
                       **{f"curve/{n}": v for n, v in c.items()}}
            if step.work is None:
                kept[b] = tensors
            else:
                save_verified(_batch_path(step.work, b), tensors)
    return kept


def _parts(step: Step, kept: dict[int, dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Every batch in order; those on disk verified again as they are read: what is assembled is what was computed."""
    sc = SynthConfig.from_cfg(step.job.cfg.synth)
    k = int(step.job.cfg.data.num_classes)
    parts = []
    for b in range(num_batches(k, sc.per_class, sc.batch_size)):
        part = kept.get(b)
        if part is None:
            part = load_batch(_batch_path(step.work, b), batch_targets(k, sc.per_class, sc.batch_size, b),
                              step.job.input_shape)
        if part is None:
            raise C2IRError(f"synthesis batch {b + 1} was damaged while the impressions were assembled; run again "
                            "(the damaged batch was discarded and will be recomputed)")
        parts.append(part)
    return parts


def _build(step: Step, out: Any) -> dict:
    """Every batch (computed now or found finished), assembled into impressions, loss curves, target share,
    cost, grid; the batches' wall and CPU seconds go into the manifest (the content does not depend on speed)."""
    job = step.job
    kept = step.prepared if step.prepared is not None else compute_batches(step)  # torchrun: done in prepare
    sc = SynthConfig.from_cfg(job.cfg.synth)
    k = int(job.cfg.data.num_classes)
    parts = _parts(step, kept)
    images = torch.cat([p["images"] for p in parts])
    targets = torch.cat([p["targets"] for p in parts])
    curves = stack_curves([{n[6:]: v for n, v in p.items() if n.startswith("curve/")} for p in parts])
    runs = [len(p["curve/total"]) for p in parts]
    low = [int(p["low_iterations"][0]) if "low_iterations" in p else 0 for p in parts]
    model, norm = classifier(job), normalizer(job)
    with torch.no_grad(), frozen_eval(model):   # a borrowed model (the API's) is left as it came
        preds = torch.cat([model(norm(images[span].to(job.device))).argmax(1).cpu()
                           for span in batches(len(images), job.batch_size)])
    share = float((preds == targets).float().mean())
    out.save_tensors("impressions.safetensors", {"images": images, "targets": targets, "predicted": preds})
    out.save_tensors("curves.safetensors", curves)
    bn_first, bn_last = curves["bn"][:, 0].mean().item(), last_values(curves["bn"]).mean().item()
    summary = {
        "count": len(images), "per_class": sc.per_class, "batches": len(parts),
        "target_share": share,
        "per_class_target_share": [float((preds[targets == c] == c).float().mean()) for c in range(k)],
        "bn_loss_first": bn_first, "bn_loss_last": bn_last,
        "ce_last": last_values(curves["ce"]).mean().item(),
        "iterations_run": runs, "low_iterations_run": low,
        # forward+backward equivalents (one image through the model and back at full resolution)
        "cost": synthesis_cost([len(p["targets"]) for p in parts], [r - lo for r, lo in zip(runs, low)], low),
    }
    timing = {"batch_seconds": sum(float(p["timing"][0]) for p in parts if "timing" in p),
              "batch_cpu_seconds": sum(float(p["timing"][1]) for p in parts if "timing" in p)}
    out.save_json("summary.json", summary)
    grid = out.file("impressions_grid.png")
    if grid is not None:
        save_grid(impression_grid(images, targets, k), grid)
    log.info("synthesize: %d impressions, %.1f%% assigned to their target class; BN loss %.3f -> %.3f",
             len(images), 100 * share, bn_first, bn_last)
    return {"summary": summary, "timing": timing}


def _load(art: Any, job: Job, _: Any) -> Impressions:
    t = art.tensors("impressions.safetensors")
    return Impressions(t["images"], t["targets"], t.get("predicted"))


SYNTHESIZE = Node("synthesize", version=2, rule=SYNTH_RULE, spec=_spec, uses=lambda job, _: {"model": Use(MODEL)},
                  build=_build, load=_load, seed=lambda job: int(job.cfg.synth.seed), resumable=True,
                  prepare=compute_batches)


def run(job: Job) -> dict:
    art = resolve(SYNTHESIZE, job).artifact
    s = art.json("summary.json")
    log.info("synthesize: %d impressions at %s (%.1f%% assigned to target)", s["count"], art.path, 100 * s["target_share"])
    return {"path": str(art.path), **s}
