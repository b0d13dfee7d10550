"""Cached forward passes: one pass per (model, dataset, transform) serves every detector, IPM,
MGI setting and layer set of a sweep.

A pass records the union of what the configured run may need: the pooled features of every
layer of every layer set of the model (`job.capture_layers`), and spatial vectors when a
configured detector may use them under some `ipm=` (`Detector.may_need`). The key holds that
capture, not the run's own layer set, so a `layer_set=` or `ipm=` sweep finds the same artifact;
each run then reads only its slice (its layers, spatial vectors only when its IPM needs them),
which equals the output of a direct pass over that subset (tests/test_feature_cache.py).
Under torchrun the batches are split across ranks and gathered, so every rank ends with the
whole bundle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from c2ir.data import load_id, load_ood
from c2ir.data.imageset import AnyImageSet
from c2ir.data.loader import BatchStream, batch_spans
from c2ir.data.sources import id_fingerprint, ood_fingerprint
from c2ir.distributed import merge_strided_batches
from c2ir.extraction import FeatureBundle, extract_features
from c2ir.graph import Job, KeyRule, Node, Step, Use, key_fields
from c2ir.stages.job import digests, normalizer, num_workers
from c2ir.stages.train import DATA_FIELDS, MODEL, classifier, head
from c2ir.validation import ood_names

log = logging.getLogger(__name__)

FEATURES_FILE = "features.safetensors"
# the captured layers enter the key as a list, not through the layer set: one pass per dataset
# serves every `layer_set=`
ID_RULES = {"test": KeyRule((*DATA_FIELDS, "data.test_split", "data.max_test_samples", "model.head")),
            "train": KeyRule((*DATA_FIELDS, "data.train_split", "evaluate.max_train_samples", "model.head"))}
# an OOD set's own seed chooses its fixed subset / random crops / noise; help text and download
# location do not change the images
OOD_RULE = KeyRule(("ood.{name}", "data.image_size", "data.channels", "model.head"),
                   exclude=("ood.{name}.layout", "ood.{name}.url", "ood.{name}.md5", "ood.{name}.download",
                            "ood.{name}.name"))


@dataclass(frozen=True)
class Pass:
    """One cached pass: the data set (`id_test`, `id_train` or `ood:<key>`) and what the reading run
    needs from it: spatial vectors on a `spatial_grid` (0: none), and whether a sweep around it may
    (`reuse_spatial`, ignored with `features.capture=configured`)."""

    dataset: str
    spatial_grid: int = 0
    reuse_spatial: bool = False


ID_TRAIN = Pass("id_train")   # the real ID training features full-access detectors fit on


def set_name(job: Job, dataset: str) -> str:
    """The data set's name in results and logs: `<data.name>-test`, `<data.name>-train`, the OOD column."""
    if dataset.startswith("ood:"):
        return ood_names(job.cfg)[dataset[4:]]
    return f"{job.cfg.data.name}-{dataset.removeprefix('id_')}"


def dataset_spec(job: Job, dataset: str) -> dict[str, Any]:
    """The key fields of a data set, with its files' content fingerprint when it comes from a folder
    (listed once per job: a large ImageFolder costs one stat per file)."""
    memo = ("dataset_spec", dataset)
    if memo not in job.memo:
        cfg = job.cfg
        if dataset.startswith("ood:"):
            name = dataset[4:]
            spec = {k.removeprefix(f"ood.{name}."): v for k, v in key_fields(cfg, OOD_RULE, name).items()}
            if spec.get("source") == "pixel_shuffled":
                spec["base"] = dataset_spec(job, "id_test")
            content = ood_fingerprint(cfg.ood[name], name, digests(job))
            spec = {"ood": name, **spec, **({"content": content} if content else {})}
        else:
            split = dataset.removeprefix("id_")
            spec = {**key_fields(cfg, ID_RULES[split]), "split": split}
            content = id_fingerprint(cfg.data, split, digests(job))
            if content:
                spec["content"] = content
        job.memo[memo] = spec
    return dict(job.memo[memo])


def dataset(job: Job, name: str) -> AnyImageSet:
    """The data set's images, listed once per job (decoded per pass), shared by feature and gradient passes."""
    memo = ("dataset", name)
    if memo not in job.memo:
        cfg = job.cfg
        if name == "id_test":
            data = load_id(cfg.data, "test")
        elif name == "id_train":
            data_cfg = cfg.data.copy()
            data_cfg.max_train_samples = cfg.evaluate.max_train_samples
            data = load_id(data_cfg, "train")
        else:
            key = name[4:]
            data = load_ood(key, cfg.ood[key], cfg.data, dataset(job, "id_test"), num_workers(job))
            data.name = set_name(job, name)
        job.memo[memo] = data
    return job.memo[memo]


def _capture(job: Job, p: Pass) -> tuple[list[str], int]:
    union = str(job.cfg.features.capture) == "union"
    grid = int(p.spatial_grid) or (int(job.cfg.features.spatial_grid) if union and p.reuse_spatial else 0)
    return list(job.capture_layers), grid


def _spec(job: Job, p: Pass) -> dict[str, Any]:
    layers, grid = _capture(job, p)
    return {"dataset": dataset_spec(job, p.dataset), "layers": layers, "spatial_grid": grid}


def slice_keys(names: list[str], layers: list[str], spatial: bool) -> list[str]:
    """The entries of a captured bundle a run reads: its layers' pooled (and spatial) features and
    every entry that is not per-layer (logits, penultimate, labels, BN-input means), in stored order."""
    want = {f"layer/{n}" for n in layers} | ({f"spatial/{n}" for n in layers} if spatial else set())
    return [k for k in names if k in want or not k.startswith(("layer/", "spatial/"))]


def extract(step: Step) -> tuple[FeatureBundle, int]:
    """(bundle, unreadable files skipped) of one (possibly sharded) pass over the data set."""
    job, p = step.job, step.param
    layers, grid = _capture(job, p)
    data, name = dataset(job, p.dataset), set_name(job, p.dataset)
    n_batches = len(batch_spans(len(data), job.batch_size))
    world = job.dist.world if job.dist.enabled else 1
    mine = list(range(job.dist.rank, n_batches, world)) if world > 1 else None
    stream = BatchStream(data, job.batch_size, num_workers(job), pin_memory=job.device.type == "cuda",
                         batches=mine, desc=name)
    part = extract_features(classifier(job), stream, normalizer(job), layers, head(job), batch_size=job.batch_size,
                            device=job.device, spatial_grid=grid, desc=f"features {name}")
    if world == 1:
        return part, stream.skipped
    # rank r holds batches r, r+W, ...: gather and restore the dataset order; a batch may be short
    # (its unreadable files dropped), so each rank's per-batch counts locate its rows
    parts = job.dist.all_gather_object((part, stream.counts, stream.skipped))
    bundle = merge_strided_batches([q for q, _, _ in parts], len(data), job.batch_size, [c for _, c, _ in parts])
    return bundle, sum(s for _, _, s in parts)


def _build(step: Step, out: Any) -> dict:
    bundle, skipped = step.prepared if step.prepared is not None else extract(step)
    out.save_tensors(FEATURES_FILE, bundle)
    step.keep({k: bundle[k] for k in slice_keys(list(bundle), step.job.layers, step.param.spatial_grid > 0)})
    data = dataset(step.job, step.param.dataset)
    return {"dataset": set_name(step.job, step.param.dataset), "count": len(data) - skipped, "skipped": skipped}


def _load(art: Any, job: Job, p: Pass) -> FeatureBundle:
    return art.tensors(FEATURES_FILE, slice_keys(art.tensor_names(FEATURES_FILE), job.layers, p.spatial_grid > 0))


FEATURES = Node("features", version=2, spec=_spec, uses=lambda job, p: {"model": Use(MODEL)}, build=_build,
                load=_load, prepare=extract)
