"""Stage `evaluate`: score the ID test set and every OOD set with every configured detector.

One cached forward pass per dataset serves all detectors; a detector that needs input
gradients (ODIN) has its own cached pass per set (`image_scores`). Detectors fit on the
impressions (data-free) or, for the full-access comparators, on real ID training features. The scores and metrics
are cached under a key of everything they depend on, then written as reports into the
Hydra run directory.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from c2ir import report
from c2ir.cache import Artifact, atomic_save_tensors, atomic_write_json
from c2ir.data import BatchStream, load_id, load_ood
from c2ir.data.sources import ood_fingerprint
from c2ir.detectors import Detector, FitData, build_detector
from c2ir.detectors.base import IMPRESSION_IMAGES, INPUT_GRADIENTS, SPATIAL
from c2ir.detectors.c2ir import C2IR
from c2ir.errors import C2IRError
from c2ir.groups import groups_of
from c2ir.metrics import accuracy, columnwise_auroc, ood_metrics
from c2ir.openood_export import write_openood_csvs
from c2ir.report_html import split_scores
from c2ir.schema import ood_names
from c2ir.stages import collect_stats, features, synthesize, weight_layers
from c2ir.stages.collect_stats import id_train_features
from c2ir.stages.common import RunContext, plain
from c2ir.stages.report_page import write_run_page
from c2ir.validation import nonfinite_problem

log = logging.getLogger(__name__)


def ood_spec(ctx: RunContext, name: str) -> dict[str, Any]:
    """Key fields of one OOD set (KEY_RULES["features:ood"]), with its folder's content fingerprint."""
    spec = {k.removeprefix(f"ood.{name}."): v for k, v in ctx.fields("features:ood", name).items()}
    if spec.get("source") == "pixel_shuffled":
        spec["base"] = ctx.data_spec("test")
    content = ood_fingerprint(ctx.cfg.ood[name], name, ctx.digests)
    if content:
        spec["content"] = content
    return {"ood": name, **spec}


IPM_PARAMETERS = {"name": "ipm", "seed": "ipm_seed", "projections": "ipm_projections"}


def ipm_overrides(ctx: RunContext) -> dict[str, Any]:
    """The `ipm=` group as detector parameters, for the detector types that declare them (C2IR).
    Only what the group sets is passed: C2IR's typed constructor holds the defaults."""
    return {IPM_PARAMETERS[k]: v for k, v in plain(ctx.cfg.ipm).items() if k in IPM_PARAMETERS}


def build_detectors(ctx: RunContext) -> dict[str, Detector]:
    if not ctx.cfg.get("detectors"):
        raise C2IRError("no detectors selected (detectors=[]); pass at least one, e.g. detectors=[c2ir,energy,msp]")
    return {name: build_detector(name, plain(ctx.cfg.detectors[name]), **ipm_overrides(ctx)) for name in ctx.cfg.detectors}


class FitInputs:
    """What detectors fit on, from the cache: the impressions' statistics and features, the MGI
    weights, and (only when a full-access detector is selected) real ID training features."""

    def __init__(self, ctx: RunContext, detectors: dict[str, Detector]):
        self.ctx = ctx
        self.stats_art = collect_stats.ensure(ctx)
        self.weights_art = weight_layers.ensure(ctx)
        self.id_train = None
        # pixels of the impressions: for detectors that fit on them or score them by a gradient pass
        self.wants_images = any({IMPRESSION_IMAGES, INPUT_GRADIENTS} & d.needs for d in detectors.values())
        if any(d.fit_on == "id_train" for d in detectors.values()):
            self.id_train = id_train_features(ctx)

    def upstream(self) -> dict[str, str]:
        up = {"collect_stats": self.stats_art.key, "weight_layers": self.weights_art.key, "model": self.ctx.model_key}
        if self.id_train is not None:
            up["features:id_train"] = self.id_train[0].key
        return up

    def fit_context(self) -> FitData:
        stats, imp = collect_stats.load(self.stats_art)
        layers, weights = weight_layers.load(self.weights_art)
        if layers != stats.layers:
            raise C2IRError("MGI weights and class statistics were computed for different layer sets; rerun `c2ir run`")
        images = synthesize.load(synthesize.ensure(self.ctx))[0] if self.wants_images else None
        return FitData(model=self.ctx.model, layers=layers, impressions=imp,
                       id_train=None if self.id_train is None else self.id_train[1],
                       class_stats=stats, layer_weights=weights, head=self.ctx.head,
                       impression_images=images, normalizer=self.ctx.normalizer)


class Evaluation:
    """Collects the inputs of one evaluation, lazily, so a cache hit loads nothing else."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        cfg = ctx.cfg
        self.detectors = build_detectors(ctx)
        needs_spatial = any(SPATIAL in d.needs for d in self.detectors.values())
        self.spatial = int(cfg.features.spatial_grid) if needs_spatial else 0
        # capture spatial vectors once when an `ipm=` sweep may need them (stages/features.py)
        self.reuse_spatial = any(SPATIAL in d.may_need for d in self.detectors.values())
        try:
            self.fit_inputs = FitInputs(ctx, self.detectors)
        except C2IRError as exc:
            dropped = [n for n, d in self.detectors.items() if d.fit_on == "id_train"]
            if not dropped:
                raise
            log.warning("full-access detectors %s skipped: ID training data unavailable (%s)", dropped, exc)
            self.detectors = {n: d for n, d in self.detectors.items() if d.fit_on != "id_train"}
            self.fit_inputs = FitInputs(ctx, self.detectors)
        fi = self.fit_inputs
        self.stats_art, self.weights_art, self.id_train = fi.stats_art, fi.weights_art, fi.id_train
        self._decoded: dict[str, Any] = {}  # listed image sets (decoded per pass), shared by feature and gradient passes
        self.sets: dict[str, tuple[Artifact, dict[str, torch.Tensor]]] = {}
        self.id_name = f"{cfg.data.name}-test"
        self.sets[self.id_name] = features.ensure(ctx, self.id_name, ctx.data_spec("test"), self.load_id_test, self.spatial,
                                                     self.reuse_spatial)
        self.ood_keys = {col: key for key, col in ood_names(cfg).items()}  # column name -> ood.<key>
        if self.id_name in self.ood_keys:
            raise C2IRError(f"an OOD set is named {self.id_name!r} like the ID test set; rename it with ood.<set>.name")
        for col, key in self.ood_keys.items():
            self.sets[col] = features.ensure(ctx, col, ood_spec(ctx, key), lambda k=key: self.load_ood(k), self.spatial,
                                              self.reuse_spatial)

    def fit_context(self) -> FitData:
        return self.fit_inputs.fit_context()

    def load_id_test(self):
        if self.id_name not in self._decoded:
            self._decoded[self.id_name] = load_id(self.ctx.cfg.data, "test")
        return self._decoded[self.id_name]

    def load_ood(self, name: str):
        if name not in self._decoded:
            self._decoded[name] = load_ood(name, self.ctx.cfg.ood[name], self.ctx.cfg.data, self.load_id_test(),
                                           self.ctx.num_workers)
            self._decoded[name].name = str(self.ctx.cfg.ood[name].get("name") or name)
        return self._decoded[name]

    def key(self) -> str:
        spec = {**self.ctx.fields("evaluate"), "used": sorted(self.detectors), "sets": list(self.sets),
                "params": {n: {"type": type(d).__name__, **d.params} for n, d in self.detectors.items()}}
        upstream = {f"features:{n}": a.key for n, (a, _) in self.sets.items()}
        upstream.update(self.fit_inputs.upstream())
        return self.ctx.key("evaluate", spec, upstream)

    def inputs(self) -> dict[str, str]:
        """Content digests of every upstream artifact the evaluation reads."""
        out = {f"features:{n}": a.digest for n, (a, _) in self.sets.items()}
        out.update(collect_stats=self.stats_art.digest, weight_layers=self.weights_art.digest, model=self.ctx.model_digest)
        if self.id_train is not None:
            out["features:id_train"] = self.id_train[0].digest
        return out

    def image_scores(self, name: str, det: Detector, set_name: str) -> np.ndarray:
        """Scores of a detector that needs its own gradient pass over the images (ODIN, ...).

        Cached per set under a key of the detector's whole config (type + parameters, not its display
        name), the set's features key and the model key; a detector fitted on impressions also
        depends on their statistics.
        """
        ctx = self.ctx
        feat_art = self.sets[set_name][0]
        spec = {"detector": {"type": type(det).__name__, **det.params}}  # resolved parameters, not the YAML overrides
        upstream = {"features": feat_art.key, "model": ctx.model_key}
        if det.requires_fit and det.fit_on != "none":
            upstream["collect_stats"] = self.stats_art.key
        key = ctx.key("image_scores", spec, upstream)

        def build(out: Path) -> dict:
            data = self.load_id_test() if set_name == self.id_name else self.load_ood(self.ood_keys[set_name])
            stream = BatchStream(data, ctx.batch_size, ctx.num_workers, desc=set_name)  # per-image scores: batch by batch
            s = np.concatenate([det.score_images(ctx.model, ctx.normalizer, b.images, ctx.batch_size, ctx.device)
                                for b in stream if len(b.images)])
            atomic_save_tensors(out / "scores.safetensors", {"scores": torch.from_numpy(np.asarray(s, dtype=np.float64))})
            return {}

        inputs = {"features": feat_art.digest, "model": ctx.model_digest}
        if "collect_stats" in upstream:
            inputs["collect_stats"] = self.stats_art.digest
        art = ctx.store.get_or_create("image_scores", key, build, config={**spec, "set": set_name}, upstream=upstream,
                                      inputs=inputs)
        return art.tensors("scores.safetensors")["scores"].numpy()

    def compute(self, out: Path) -> dict:
        fit = self.fit_context()
        scores: dict[str, dict[str, np.ndarray]] = {}
        for name, det in self.detectors.items():
            det.fit(fit)
            if det.needs_input_gradients:
                scores[name] = {s: self.image_scores(name, det, s) for s in self.sets}
                continue
            scores[name] = {s: det.score(bundle) for s, (_, bundle) in self.sets.items()}
        id_bundle = self.sets[self.id_name][1]
        id_acc = accuracy(id_bundle["logits"].numpy(), id_bundle["labels"].numpy())
        not_computable = not_computable_detectors(scores)
        scores = {d: v for d, v in scores.items() if d not in not_computable}  # no number is reported for them
        positive = str(OmegaConf.select(self.ctx.cfg, "metrics.fpr_positive", default="id"))
        metrics = {
            det: {ood: ood_metrics(per_set[self.id_name], per_set[ood], positive) for ood in self.ood_keys}
            for det, per_set in scores.items()
        }
        access = {n: d.data_access for n, d in self.detectors.items()}
        result = {"id_set": self.id_name, "id_accuracy": id_acc, "ood_sets": list(self.ood_keys),
                  "metrics": metrics, "fpr_positive": positive, "access": access, "ipm": plain(self.ctx.cfg.ipm),
                  "mgi": plain(self.ctx.cfg.mgi), "layer_weights": self.weights_art.json("weights.json"),
                  "counts": {s: int(len(b["logits"])) for s, (_, b) in self.sets.items()},
                  "layer_auroc": self.layer_auroc(skip=set(not_computable)), "not_computable": not_computable,
                  "c2ir_fit": {n: d.fit_summary() for n, d in self.detectors.items() if isinstance(d, C2IR)}}
        atomic_save_tensors(out / "scores.safetensors",
                            {f"{d}/{s}": torch.from_numpy(np.ascontiguousarray(v)) for d, ps in scores.items() for s, v in ps.items()})
        atomic_write_json(out / "results.json", result)
        return {"id_accuracy": id_acc}

    def layer_auroc(self, skip: set[str]) -> dict[str, dict]:
        """Per C2IR detector: AUROC (%) of each layer's raw deviation alone, per OOD set (the report's
        evidence for the layer choice; AUROC is invariant to the per-layer normalisation)."""
        out = {}
        for name, det in self.detectors.items():
            if not isinstance(det, C2IR) or name in skip:
                continue
            dev = {s: det.layer_deviations(bundle).numpy() for s, (_, bundle) in self.sets.items()}
            if not all(np.isfinite(v).all() for v in dev.values()):
                continue
            out[name] = {"layers": list(det.layers),
                         "auroc": {o: columnwise_auroc(dev[self.id_name], dev[o]) for o in self.ood_keys}}
        return out


def not_computable_detectors(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """{detector: why} for detectors with a NaN or infinite score on some set: reported as "not computable",
    never as a metric (a NaN ranks as the lowest score: AUROC 0 / FPR95 100 would look measured)."""
    out = {}
    for det, per_set in scores.items():
        problems = [f"{p} on {s}" for s, v in per_set.items() if (p := nonfinite_problem(v))]
        if problems:
            out[det] = "; ".join(problems) + " (check its parameters, e.g. a temperature or weight)"
            log.warning("detector %s is not computable: %s; no metric is reported for it", det, out[det])
    return out


def ensure(ctx: RunContext) -> Artifact:
    ev = Evaluation(ctx)
    return ctx.store.get_or_create("evaluate", ev.key(), ev.compute, config={"ipm": plain(ctx.cfg.ipm)},
                                   upstream={"collect_stats": ev.stats_art.key, "weight_layers": ev.weights_art.key,
                                             **{f"features:{n}": a.key for n, (a, _) in ev.sets.items()}},
                                   seed=ctx.seed, inputs=ev.inputs())


def run(cfg) -> None:
    report_evaluation(RunContext(cfg))  # Evaluation builds the detectors before any upstream stage runs


def report_evaluation(ctx: RunContext) -> None:
    """Evaluate (or load the cached evaluation) and write the reports into the run directory.

    Tables (md/csv/json) first, then the pictures and report.html, so a failing plot costs no result.
    `report.figures=false` skips the pictures and the page: in a sweep they are most of each job's own
    cost (docs/BENCHMARKS.md section 6), while `c2ir report <sweep dir>` needs only the tables.
    """
    cfg = ctx.cfg
    art = ensure(ctx)
    if not ctx.dist.is_main:
        return
    run_dir = report.run_dir(cfg)
    result = {**art.json("results.json"), "groups": groups_of(cfg)}  # near/far: presentation, from the config
    synth_art = ctx.store.lookup("synthesize", synthesize.key(ctx))
    if synth_art is not None:  # the run directory's copy only (c2ir report plots quality against this cost)
        result["synthesis"] = synthesize.cost_summary(synth_art)
    grid = ctx.store.dir("synthesize", synthesize.key(ctx)) / "impressions_grid.png"
    if grid.is_file():
        shutil.copy2(grid, run_dir / "impressions_grid.png")
    report.write_reports(run_dir, result)
    if result["groups"]:
        write_openood_csvs(run_dir / "openood", result, split_scores(art.tensors("scores.safetensors")))
    print(report.terminal_table(result))
    if OmegaConf.select(cfg, "report.figures", default=True):
        write_run_page(ctx, art, run_dir)
    log.info("reports written to %s", run_dir)
