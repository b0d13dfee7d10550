"""Stage `synthesize`: invert the fixed classifier into class-conditional impressions (DeepInversion).

Batches are independent (own seed, own class-balanced targets). Each finished batch is
saved atomically in the key's partial folder, so an interrupted run resumes at the first
missing batch; under torchrun, rank r computes batches r, r+W, r+2W, ... and rank 0
assembles and publishes the artifact once every batch exists.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from c2ir.cache import (Artifact, DamagedFile, atomic_save_tensors, atomic_write_json, discard_verified, load_verified,
                        save_verified)
from c2ir.errors import C2IRError
from c2ir.extraction import batches
from c2ir.impressions import (SynthConfig, batch_seed, batch_targets, impression_grid, last_values, num_batches,
                              stack_curves, synthesize_batch)
from c2ir.stages.common import RunContext, plain
from c2ir.synth_schedule import phase_iterations, progress_plan, synthesis_cost

log = logging.getLogger(__name__)


def key(ctx: RunContext) -> str:
    spec = ctx.fields("synthesize")
    sc, size = ctx.cfg.synth, int(ctx.cfg.data.image_size)
    low, _ = phase_iterations(size, int(sc.iterations), int(sc.get("warmup_iterations") or 0),
                              int(sc.get("warmup_min_size") or 16))
    if int(sc.get("warmup_iterations") or 0) > 0 and low == 0:
        # before issue 20 a warm-up always ran at half resolution; on images too small for that it now runs
        # at full size, so such impressions must not share the key of the former half-resolution ones
        spec["synth.warmup_at_full_size"] = True
    return ctx.key("synthesize", spec, {"model": ctx.model_key})


def _batch_path(work: Path, b: int) -> Path:
    return work / f"batch_{b:05d}.safetensors"


def compute_batches(ctx: RunContext, work: Path) -> None:
    """Synthesise this rank's missing batches into `work` (resumable), behind one progress bar for all of
    them: impressions done of this rank's total, iterations per second and the time left (resumed batches
    count as done)."""
    cfg = ctx.cfg
    sc = SynthConfig.from_cfg(cfg.synth)
    k = int(cfg.data.num_classes)
    n_batches = num_batches(k, sc.per_class, sc.batch_size)
    shape = (int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
    model = ctx.model
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(cfg.synth.get("autocast", "none")))
    channels_last = bool(cfg.synth.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.synth.get("compile", False):
        model = torch.compile(model)
    work.mkdir(parents=True, exist_ok=True)
    mine = list(range(ctx.dist.rank, n_batches, ctx.dist.world))
    done = [_batch_path(work, b).exists() and load_batch(_batch_path(work, b), batch_targets(
        k, sc.per_class, sc.batch_size, b), shape) is not None for b in mine]
    sizes = [len(batch_targets(k, sc.per_class, sc.batch_size, b)) for b in mine]
    plan = progress_plan(sizes, done, sum(phase_iterations(shape[1], sc.iterations, sc.warmup_iterations,
                                                           sc.warmup_min_size)))
    made = plan.done_impressions
    bar = tqdm(total=plan.total_iterations, initial=plan.done_iterations, unit="it", dynamic_ncols=True,
               desc=f"synthesize {made}/{plan.total_impressions} impressions", disable=not sys.stderr.isatty())
    with bar:
        for b, finished, size in zip(mine, done, sizes):
            if finished:
                log.info("synthesize: batch %d/%d already done (resuming)", b + 1, n_batches)
                continue
            targets = batch_targets(k, sc.per_class, sc.batch_size, b)
            wall, cpu = time.perf_counter(), time.process_time()
            res = synthesize_batch(model, ctx.normalizer, targets, shape, sc, batch_seed(sc.seed, b), ctx.device,
                                   desc=f"synthesize batch {b + 1}/{n_batches}", autocast_dtype=autocast,
                                   channels_last=channels_last, progress=bar)
            made += size
            bar.set_description_str(f"synthesize {made}/{plan.total_impressions} impressions")
            c = res.curves
            log.info("synthesize batch %d/%d: loss %.3f -> %.3f (ce %.3f, bn %.3f -> %.3f) in %d iterations", b + 1,
                     n_batches, float(c["total"][0]), float(c["total"][-1]), float(c["ce"][-1]), float(c["bn"][0]),
                     float(c["bn"][-1]), res.iterations)
            timing = torch.tensor([time.perf_counter() - wall, time.process_time() - cpu], dtype=torch.float64)
            save_verified(_batch_path(work, b), {"images": res.images, "targets": res.targets,
                                                       "low_iterations": torch.tensor([res.low_iterations]),
                                                       "timing": timing,  # wall and CPU seconds of this batch
                                                       **{f"curve/{n}": v for n, v in c.items()}})


def batch_problem(t: dict[str, torch.Tensor], targets: torch.Tensor, shape: tuple[int, int, int]) -> str | None:
    """Why the tensors of a batch file are not batch `targets` of images of `shape` (None: they are)."""
    if not {"images", "targets"} <= set(t) or not any(k.startswith("curve/") for k in t):
        return "missing tensors"
    if not torch.equal(t["targets"], targets):
        return "its targets are not this batch's classes"
    if tuple(t["images"].shape) != (len(targets), *shape) or not torch.isfinite(t["images"]).all():
        return f"images of shape {tuple(t['images'].shape)} (expected {(len(targets), *shape)}, finite)"
    return None


def load_batch(path: Path, targets: torch.Tensor, shape: tuple[int, int, int]) -> dict[str, torch.Tensor] | None:
    """A finished batch file, verified (content hash, then its targets and image shape); a damaged one is
    deleted with a warning (None: recompute it), so it is never assembled into the impressions."""
    try:
        t, _ = load_verified(path)
        problem = batch_problem(t, targets, shape)
    except DamagedFile as exc:
        problem = str(exc)
    if problem is None:
        return t
    log.warning("synthesize: damaged batch file %s (%s); discarding and recomputing it", path, problem)
    discard_verified(path)
    return None


def assemble(ctx: RunContext, work: Path, out: Path) -> dict:
    """Concatenate all batches into the artifact: impressions, loss curves, target share, grid PNG."""
    sc = SynthConfig.from_cfg(ctx.cfg.synth)
    k = int(ctx.cfg.data.num_classes)
    n_batches = num_batches(k, sc.per_class, sc.batch_size)
    shape = (int(ctx.cfg.data.channels), int(ctx.cfg.data.image_size), int(ctx.cfg.data.image_size))
    parts = []
    for b in range(n_batches):  # verified again as they are read: what is assembled is what was computed
        part = load_batch(_batch_path(work, b), batch_targets(k, sc.per_class, sc.batch_size, b), shape)
        if part is None:
            raise C2IRError(f"synthesis batch {b + 1} was damaged while the impressions were assembled; run again "
                            "(the damaged batch was discarded and will be recomputed)")
        parts.append(part)
    images = torch.cat([p["images"] for p in parts])
    targets = torch.cat([p["targets"] for p in parts])
    curves = stack_curves([{n[6:]: v for n, v in p.items() if n.startswith("curve/")} for p in parts])
    runs = [len(p["curve/total"]) for p in parts]
    low = [int(p["low_iterations"][0]) if "low_iterations" in p else 0 for p in parts]
    with torch.no_grad():
        preds = torch.cat([ctx.model(ctx.normalizer(images[span].to(ctx.device))).argmax(1).cpu()
                           for span in batches(len(images), ctx.batch_size)])
    share = float((preds == targets).float().mean())
    atomic_save_tensors(out / "impressions.safetensors", {"images": images, "targets": targets, "predicted": preds})
    atomic_save_tensors(out / "curves.safetensors", curves)
    bn_first, bn_last = curves["bn"][:, 0].mean().item(), last_values(curves["bn"]).mean().item()
    summary = {
        "count": len(images), "per_class": sc.per_class, "batches": n_batches,
        "target_share": share,
        "per_class_target_share": [float((preds[targets == c] == c).float().mean()) for c in range(k)],
        "bn_loss_first": bn_first, "bn_loss_last": bn_last,
        "ce_last": last_values(curves["ce"]).mean().item(),
        "iterations_run": runs, "low_iterations_run": low,
        # forward+backward equivalents (one image through the model and back at full resolution)
        "cost": synthesis_cost([len(p["targets"]) for p in parts], [r - lo for r, lo in zip(runs, low)], low),
    }
    # in the manifest, not in a file: the artifact's content (and digest) does not depend on the machine's speed
    timing = {"batch_seconds": sum(float(p["timing"][0]) for p in parts if "timing" in p),
              "batch_cpu_seconds": sum(float(p["timing"][1]) for p in parts if "timing" in p)}
    atomic_write_json(out / "summary.json", summary)
    _save_grid(impression_grid(images, targets, k), out / "impressions_grid.png")
    log.info("synthesize: %d impressions, %.1f%% assigned to their target class; BN loss %.3f -> %.3f",
             len(images), 100 * share, bn_first, bn_last)
    return {"summary": summary, "timing": timing}


def _save_grid(grid: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    scale = max(1, 256 // max(arr.shape[:2]))
    img = Image.fromarray(np.ascontiguousarray(arr))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def ensure(ctx: RunContext) -> Artifact:
    art_key = key(ctx)
    inputs = {"model": ctx.model_digest}
    found = ctx.store.lookup("synthesize", art_key, inputs)
    if found is not None:
        log.info("cache hit: synthesize/%s", art_key)
        return found
    config = {"synth": plain(ctx.cfg.synth), "model": ctx.fields("model")}
    with ctx.store.resumable("synthesize", art_key) as work:
        art = _compute(ctx, art_key, work, config, inputs)
    if ctx.dist.is_main:
        shutil.rmtree(work, ignore_errors=True)
    return art


def _compute(ctx: RunContext, art_key: str, work: Path, config: dict, inputs: dict) -> Artifact:
    if ctx.dist.enabled:  # every rank fills its batches, then rank 0 publishes
        compute_batches(ctx, work)
        ctx.dist.barrier()
        if ctx.dist.is_main:
            ctx.store.get_or_create("synthesize", art_key, lambda out: assemble(ctx, work, out), config=config,
                                    upstream={"model": ctx.model_key}, seed=int(ctx.cfg.synth.seed), inputs=inputs)
        ctx.dist.barrier()
        art = ctx.store.lookup("synthesize", art_key, inputs)
        assert art is not None
    else:
        def build(out: Path) -> dict:
            compute_batches(ctx, work)
            return assemble(ctx, work, out)

        art = ctx.store.get_or_create("synthesize", art_key, build, config=config,
                                      upstream={"model": ctx.model_key}, seed=int(ctx.cfg.synth.seed), inputs=inputs)
    return art


def cost_summary(art: Artifact) -> dict:
    """What the synthesis cost: impressions, forward+backward equivalents (`synth_schedule.synthesis_cost`), the
    wall seconds of the process that built it (resumed or sharded work not included) and, since issue 20, the
    wall and CPU seconds of its batches summed (`batch_seconds`, `batch_cpu_seconds`: resumed batches and
    other ranks' included)."""
    s = art.json("summary.json")
    cost = s.get("cost")
    if cost is None:  # built before issue 20: every batch ran all its iterations
        synth = art.manifest.get("config", {}).get("synth", {})
        cost = synthesis_cost([s["count"]], [int(synth.get("iterations", 0))], [int(synth.get("warmup_iterations") or 0)])
    return {"impressions": int(s["count"]), "cost": float(cost), "seconds": art.manifest.get("seconds"),
            **art.manifest.get("timing", {})}


def load(art: Artifact) -> tuple[torch.Tensor, torch.Tensor]:
    t = art.tensors("impressions.safetensors")
    return t["images"], t["targets"]


def run(cfg) -> None:
    ctx = RunContext(cfg)
    art = ensure(ctx)
    s = art.json("summary.json")
    log.info("synthesize: %d impressions at %s (%.1f%% assigned to target)", s["count"], art.path, 100 * s["target_share"])
