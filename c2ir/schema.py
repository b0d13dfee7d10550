"""Typed schemas of the composed config: one place that says what each value may be.

Hydra composes the YAML files; these dataclasses then check the result, so every bad
value gets one line naming the key, the value and what is valid (`c2ir: error: ...`)
instead of a traceback deep inside a stage. The defaults stay in the YAML files; a
schema field only declares the type and the valid range. Detector parameters are
checked by the detector classes themselves (their keyword-only constructors).

A schema also rejects keys it does not know (`+synth.iterationz=3`), so a typo is
an error rather than a silently ignored setting.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from c2ir.errors import C2IRError
from c2ir.imglist import open_imglist  # torch-free, like this module
from c2ir.sizes import check_sizes

OOD_GROUPS = ("near", "far")  # `ood.<set>.group`: OpenOOD's near-OOD / far-OOD means (c2ir.groups)
RESIZE_MODES = ("resize", "center_crop", "random_crop", "resize_center_crop", "short_side_center_crop")  # = c2ir.data.transforms


def _spec(kind: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          optional: bool = False, choices: tuple[str, ...] = (), length: int | None = None,
          example: str = "") -> Any:
    """A schema field: `kind` is int, float, bool, str or floats (a list of floats)."""
    return field(default=None, metadata={"kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "optional": optional,
                                         "choices": choices, "length": length, "example": example})


@dataclass
class SynthSchema:
    per_class: int = _spec("int", lo=1, example="40")
    batch_size: int = _spec("int", lo=1, example="200")
    iterations: int = _spec("int", lo=1, example="300")
    warmup_iterations: int = _spec("int", lo=0, example="2000")
    warmup_min_size: int = _spec("int", lo=1, example="16")
    lr: float = _spec("float", lo=0, lo_open=True, example="0.1")
    betas: list = _spec("floats", lo=0, hi=1, length=2, example="[0.5,0.9]")
    ce_weight: float = _spec("float", lo=0, example="1.0")
    bn_weight: float = _spec("float", lo=0, example="10.0")
    first_bn_multiplier: float = _spec("float", lo=0, example="10.0")
    bn_reduce: str = _spec("str", choices=("sum", "mean"))
    tv_weight: float = _spec("float", lo=0, example="2.5e-5")
    l2_weight: float = _spec("float", lo=0, example="3e-8")
    jitter: int = _spec("int", lo=0, example="2")
    flip: bool = _spec("bool")
    seed: int = _spec("int", lo=0, example="0")
    lr_schedule: str = _spec("str", choices=("cosine", "linear", "constant"))  # = c2ir.synth_schedule.SCHEDULES
    stop_patience: int = _spec("int", lo=0, example="20")
    stop_tol: float = _spec("float", lo=0, hi=1, example="0.01")
    bn_stats: str = _spec("str", choices=("hooks", "fused"))
    autocast: str = _spec("str", choices=("none", "bf16", "fp16"))
    channels_last: bool = _spec("bool")
    compile: bool = _spec("bool")


@dataclass
class TrainSchema:
    epochs: int = _spec("int", lo=1, example="20")
    batch_size: int = _spec("int", lo=1, example="64")
    lr: float = _spec("float", lo=0, lo_open=True, example="0.05")
    warmup: float = _spec("float", lo=0, hi=1, example="0.15")
    weight_decay: float = _spec("float", lo=0, example="5e-4")
    finetune: bool = _spec("bool")
    pad: int = _spec("int", lo=0, optional=True, example="4")


@dataclass
class IPMSchema:
    """The `ipm=` group: which IPM C2IR uses and its parameters (C2IR's constructor holds the defaults)."""

    name: str = _spec("str", example="mean_standardized")
    seed: int = _spec("int", lo=0, example="0")
    projections: int = _spec("int", lo=1, example="64")


@dataclass
class RootSchema:
    seed: int = _spec("int", lo=0, example="0")
    device: str = _spec("str", example="cpu")
    threads: int = _spec("int", lo=1, optional=True, example="4")
    batch_size: int = _spec("int", lo=1, example="256")
    num_workers: int = _spec("int", lo=0, optional=True, example="2")
    layer_set: str = _spec("str", example="default")
    cache_root: str = _spec("str", example="outputs/cache")
    output_dir: str = _spec("str", optional=True, example="outputs/runs/latest")


@dataclass
class FeaturesSchema:
    spatial_grid: int = _spec("int", lo=0, example="4")
    capture: str = _spec("str", choices=("union", "configured"))


@dataclass
class CollectStatsSchema:
    compare_with_id: bool = _spec("bool")
    max_spatial_per_class: int = _spec("int", lo=0, example="512")


@dataclass
class ReportSchema:
    figures: bool = _spec("bool")
    published: str = _spec("str", optional=True, example="openood_cifar10")  # a benchmark of c2ir/published/


@dataclass
class MetricsSchema:
    """Which class FPR95 takes as positive: id (ODIN, Mahalanobis, C2IR; default) or ood (OpenOOD v1.5)."""

    fpr_positive: str = _spec("str", choices=("id", "ood"))


@dataclass
class EvaluateSchema:
    max_train_samples: int = _spec("int", lo=1, optional=True, example="5000")


@dataclass
class ScoreSchema:
    """`c2ir score`: the folder, the detector, the data-free threshold's share of impressions kept as ID."""

    input: str = _spec("str", optional=True, example="path/to/images")
    detector: str = _spec("str", example="c2ir")
    tpr: float = _spec("float", lo=0, hi=1, example="0.95")
    resize: str = _spec("str", choices=("resize", "center_crop"))


@dataclass
class DataSchema:
    """Typed fields of every `data=` option; other keys (root, archive, ...) are source-specific."""

    name: str = _spec("str")
    source: str = _spec("str", choices=("sklearn_digits", "torchvision", "imagefolder", "shared", "imglist"))
    num_classes: int = _spec("int", lo=1, example="10")
    channels: int = _spec("int", lo=1, hi=3, example="3")
    image_size: int = _spec("int", lo=1, example="32")
    jitter: int = _spec("int", lo=0, example="2")
    seed: int = _spec("int", lo=0, example="0")
    max_train_samples: int = _spec("int", lo=1, optional=True, example="1000")
    max_test_samples: int = _spec("int", lo=1, optional=True, example="1000")
    resize: str = _spec("str", choices=RESIZE_MODES)
    flip_invariant: bool = _spec("bool")
    mean: list = _spec("floats", example="[0.5,0.5,0.5]")
    std: list = _spec("floats", lo=0, lo_open=True, example="[0.25,0.25,0.25]")


@dataclass
class ModelSchema:
    """Typed fields shared by the `model=` options (each architecture reads its own; others are open)."""

    width: int = _spec("int", lo=1, example="16")
    depth: int = _spec("int", lo=1, example="20")
    growth: int = _spec("int", lo=1, example="12")
    widen_factor: int = _spec("int", lo=1, example="10")
    reduction: float = _spec("float", lo=0, lo_open=True, hi=1, example="0.5")
    num_classes: int = _spec("int", lo=1, example="10")
    in_channels: int = _spec("int", lo=1, hi=3, example="3")
    mean: list = _spec("floats", example="[0.5,0.5,0.5]")
    std: list = _spec("floats", lo=0, lo_open=True, example="[0.25,0.25,0.25]")
    trust_checkpoint: bool = _spec("bool")
    require_checkpoint: str = _spec("str", optional=True, example="'an OpenOOD checkpoint'")  # why weights are needed


@dataclass
class OODSchema:
    """Typed fields of one `ood.<name>` set; other keys are source-specific."""

    source: str = _spec("str", choices=("folder", "imglist", "torchvision", "noise", "photo_patches", "pixel_shuffled"))
    max_samples: int = _spec("int", lo=1, optional=True, example="2000")
    seed: int = _spec("int", lo=0, example="0")
    resize: str = _spec("str", choices=RESIZE_MODES)
    name: str = _spec("str", optional=True, example="textures")
    group: str = _spec("str", optional=True, choices=OOD_GROUPS)  # near / far: the set's mean row in the reports


# (config path, schema, closed: unknown keys are errors)
SCHEMAS: list[tuple[str, type, bool]] = [
    ("", RootSchema, False), ("synth", SynthSchema, True), ("train", TrainSchema, True),
    ("features", FeaturesSchema, True), ("collect_stats", CollectStatsSchema, True),
    ("evaluate", EvaluateSchema, True), ("score", ScoreSchema, True), ("report", ReportSchema, True), ("metrics", MetricsSchema, True),
    ("data", DataSchema, False),
    ("ipm", IPMSchema, True), ("model", ModelSchema, False),
]


def _bad(path: str, value: Any, want: str, example: str) -> C2IRError:
    hint = f" (e.g. {path}={example})" if example else ""
    return C2IRError(f"{path}={value!r} is not valid: it must be {want}{hint}")


def check_value(path: str, value: Any, meta: dict[str, Any]) -> Any:
    """The value converted to its declared type, or a C2IRError naming it and what is valid."""
    kind, ex = meta["kind"], meta["example"]
    if value is None:
        if meta["optional"]:
            return None
        raise _bad(path, value, f"a {kind}" if kind != "floats" else "a list of numbers", ex)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(path, value, "true or false", "true")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise _bad(path, value, "a string", ex)
        if meta["choices"] and value not in meta["choices"]:
            raise _bad(path, value, "one of " + ", ".join(meta["choices"]), meta["choices"][0])
        return value
    if kind == "floats":
        if not isinstance(value, (list, tuple, ListConfig)) or (meta["length"] and len(value) != meta["length"]):
            raise _bad(path, value, f"a list of {meta['length']} numbers", ex)
        return [check_value(f"{path}[{i}]", v, {**meta, "kind": "float", "example": ""}) for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, value, "an integer" if kind == "int" else "a number", ex)
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise _bad(path, value, "an integer", ex)
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise _bad(path, value, "a finite number", ex)
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo)):
        rng = f"> {lo}" if meta["lo_open"] else f">= {lo}"
        raise _bad(path, value, f"{'an integer' if kind == 'int' else 'a number'} {rng}"
                   + (f" and <= {hi}" if hi is not None else ""), ex)
    if hi is not None and value > hi:
        raise _bad(path, value, f"at most {hi}", ex)
    return value


def check_node(path: str, node: Any, schema: type, closed: bool) -> None:
    """Check every schema field present in `node`; a closed schema also rejects unknown keys."""
    if not isinstance(node, (DictConfig, dict)):
        raise C2IRError(f"{path or 'the config'} must be a mapping, got {node!r}")
    known = {f.name: f.metadata for f in fields(schema)}
    prefix = f"{path}." if path else ""
    for key in node:
        if key not in known:
            if closed:
                raise C2IRError(f"unknown config key {prefix}{key}; valid keys of {path}: {', '.join(known)}")
            continue
        check_value(source_key(node, key) or f"{prefix}{key}", node[key], known[key])


def source_key(node: Any, key: str) -> str | None:
    """The key a value was typed under when `node.key` only refers to it (`synth.flip: ${data.flip_invariant}`),
    so an error names what the user set (data.flip_invariant=maybe), not the key that copies it."""
    if not isinstance(node, DictConfig) or not OmegaConf.is_interpolation(node, key):
        return None
    raw = str(node._get_node(key)._value())  # noqa: SLF001 - OmegaConf has no public accessor for the raw string
    m = re.fullmatch(r"\$\{([A-Za-z_][\w.]*)\}", raw)
    return m[1] if m else None


def check_normalization(cfg: DictConfig) -> None:
    """`model.mean` / `model.std` (usually `${data.mean}` / `${data.std}`) hold one value per input channel."""
    model, channels = cfg.get("model"), OmegaConf.select(cfg, "data.channels")
    if not isinstance(model, DictConfig) or not isinstance(channels, int):
        return
    for what in ("mean", "std"):
        values = model.get(what)
        if values is not None and len(values) != channels:
            shown = source_key(model, what) or f"model.{what}"
            raise C2IRError(f"{shown}={list(values)} has {len(values)} value(s) but data.channels={channels}; "
                            f"give one value per input channel")


def drop_unselected_ood(cfg: DictConfig) -> None:
    """Remove `ood.<name>` entries that are tweaks without a set (an experiment's `max_samples` for a set
    the user's `ood=[...]` no longer selects): a selected set always has a `source`."""
    ood = cfg.get("ood")
    if not isinstance(ood, DictConfig):
        return
    stale = [n for n in ood if not isinstance(ood[n], DictConfig) or "source" not in ood[n]]
    if stale:
        with open_dict(cfg):
            for n in stale:
                ood.pop(n)


def ood_names(cfg: DictConfig) -> dict[str, str]:
    """{config key: column name} of the selected OOD sets (`ood.<key>.name` renames a column)."""
    out = {n: str(cfg.ood[n].get("name") or n) for n in cfg.ood}
    seen: dict[str, str] = {}
    for key, col in out.items():
        if col in seen:
            raise C2IRError(f"two OOD sets are both named {col!r} ({seen[col]} and {key}); give each a different ood.<set>.name")
        seen[col] = key
    return out


def check_cache_root(value: Any) -> None:
    """The artifact store's folder must exist (it is created) and accept a file: tried, not guessed."""
    if value is None or not str(value).strip():
        raise C2IRError(f"cache_root={value!r} is empty; set cache_root to a writable folder (e.g. cache_root=outputs/cache)")
    problem = writable_problem(Path(str(value)).expanduser())
    if problem:
        raise C2IRError(f"cache_root={value} {problem}; set cache_root to a writable folder")


def writable_problem(folder: Path) -> str | None:
    """Why `folder` is not (and cannot be made) a folder this process writes into, or None: tried, not guessed
    (a probe file is created and removed)."""
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"is not a writable folder ({exc.strerror or exc})"
    return None


# stages that read the ID test set and the OOD sets, and the one that scores a user's folder
DATA_STAGES = ("train", "evaluate", "run")
OOD_STAGES = ("evaluate", "run")


def _folder(path: Any) -> Path | None:
    return Path(str(path)).expanduser() if path else None


def check_inputs(cfg: DictConfig) -> None:
    """Files and folders named by the config exist, checked before any model is built or torch imported.

    A missing checkpoint or data folder is then reported in about a second, not after a minute of training
    or synthesis. Checked where a stage will read them: the checkpoint always; an ImageFolder ID set's
    `data.root` for train/evaluate/run; folder OOD sets for evaluate/run; image lists in OpenOOD's layout
    (`source: imglist`, `c2ir.imglist`: the list and every image it names) likewise; `score.input` for score. Sets that
    come from a shared archive, a download or torchvision are left to their source, and the stages check
    again where they open the files (the API does not come through here). With a cluster launcher this runs
    on the submitting host: paths must exist there too.
    """
    stage = str(cfg.get("stage") or "run")
    ckpt = OmegaConf.select(cfg, "model.checkpoint")
    needed = OmegaConf.select(cfg, "model.require_checkpoint")  # an experiment whose weights cannot be trained here
    if needed and not ckpt:
        raise C2IRError(f"this experiment needs model.checkpoint=<file>: {needed}")
    if ckpt and not _folder(ckpt).is_file():
        raise C2IRError(f"checkpoint not found: {_folder(ckpt)}; set model.checkpoint to an existing file")
    data = cfg.get("data") or {}
    root = data.get("root")
    if stage in DATA_STAGES and data.get("source") == "imagefolder" and (root or not data.get("archive")) \
            and not (root and _folder(root).is_dir()):
        layout = data.get("layout") or "<root>/<split>/<class>/*.jpg"
        raise C2IRError(f"{data.get('name', 'data')}: folder not found: {_folder(root)} (expected layout: {layout}); "
                        "set data.root")
    if stage in DATA_STAGES and data.get("source") == "imglist":  # OpenOOD's layout: the list and its images
        open_imglist(data.get("root") or ".", str(data.get("test_split") or "test"), data.get("data_dir") or "",
                     f"{data.get('name', 'data')}-test", "paths.data_root or data.root")
    for key, ood in (cfg.get("ood") or {}).items() if stage in OOD_STAGES else ():
        root = ood.get("root")
        if ood.get("source") == "imglist":
            open_imglist(root or ".", str(ood.get("imglist")), ood.get("data_dir") or "", str(ood.get("name") or key),
                         f"paths.data_root or ood.{key}.root")
            continue
        if ood.get("source") != "folder" or (ood.get("url") and ood.get("download")) or (not root and ood.get("archive")):
            continue  # generated, torchvision, downloadable or a shared archive: their source reports what is missing
        if not root:  # the wording of c2ir.data.sources, which says the same to API users
            raise C2IRError(f"{ood.get('name') or key}: no folder given; set ood.{key}.root=DIR "
                            f"({ood.get('layout', 'a folder of images')})")
        if not _folder(root).is_dir():
            layout = f" (expected layout: {ood.layout})" if ood.get("layout") else ""
            raise C2IRError(f"{ood.get('name') or key}: image folder not found: {_folder(root)}{layout}; "
                            f"set ood.{key}.root to the folder")
    if stage == "score":
        score = cfg.get("score") or {}
        if not score.get("input"):
            raise C2IRError("score needs a folder of images: pass score.input=DIR")
        root = _folder(score.input)
        if not root.is_dir():
            raise C2IRError(f"score.input={root} is not a folder; pass score.input=DIR with the images to score")
        if not any(p.is_file() and not p.name.startswith(".") for p in root.rglob("*")):
            raise C2IRError(f"no files found under {root}; point score.input at a folder of images")


def check_spatial_grid(cfg: DictConfig) -> None:
    """A grid of spatial vectors finer than the input's pixels samples nothing new and only multiplies memory
    (features.spatial_grid=1000 asks for a million vectors per image and layer)."""
    grid, size = OmegaConf.select(cfg, "features.spatial_grid"), OmegaConf.select(cfg, "data.image_size")
    if isinstance(grid, int) and isinstance(size, int) and grid > size:
        raise C2IRError(f"features.spatial_grid={grid} is finer than the {size}x{size} input (data.image_size); "
                        f"choose at most {size} (e.g. features.spatial_grid=4)")


def validate(cfg: DictConfig) -> DictConfig:
    """Check the composed config in place (and drop stale OOD tweaks); raises C2IRError with one line."""
    drop_unselected_ood(cfg)
    check_cache_root(cfg.get("cache_root"))
    for path, schema, closed in SCHEMAS:
        node = OmegaConf.select(cfg, path) if path else cfg
        if node is not None:
            check_node(path, node, schema, closed)
    if not cfg.get("ood"):
        raise C2IRError("no OOD sets selected (ood=[]); pass at least one, e.g. ood=[gaussian_noise] "
                        "or ood=[folder] ood.folder.root=DIR")
    for name in cfg.ood:
        check_node(f"ood.{name}", cfg.ood[name], OODSchema, False)
    ood_names(cfg)
    check_normalization(cfg)
    check_spatial_grid(cfg)
    check_sizes(cfg)
    if not cfg.get("detectors"):
        raise C2IRError("no detectors selected (detectors=[]); pass at least one, e.g. detectors=[c2ir,energy,msp]")
    check_inputs(cfg)
    return cfg
