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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from c2ir.errors import C2IRError

RESIZE_MODES = ("resize", "center_crop", "random_crop", "resize_center_crop")  # = c2ir.data.transforms


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
    source: str = _spec("str", choices=("sklearn_digits", "torchvision", "imagefolder", "shared"))
    num_classes: int = _spec("int", lo=1, example="10")
    channels: int = _spec("int", lo=1, hi=3, example="3")
    image_size: int = _spec("int", lo=1, example="32")
    jitter: int = _spec("int", lo=0, example="2")
    seed: int = _spec("int", lo=0, example="0")
    max_train_samples: int = _spec("int", lo=1, optional=True, example="1000")
    max_test_samples: int = _spec("int", lo=1, optional=True, example="1000")
    resize: str = _spec("str", choices=RESIZE_MODES)


@dataclass
class OODSchema:
    """Typed fields of one `ood.<name>` set; other keys are source-specific."""

    source: str = _spec("str", choices=("folder", "torchvision", "noise", "photo_patches", "pixel_shuffled"))
    max_samples: int = _spec("int", lo=1, optional=True, example="2000")
    seed: int = _spec("int", lo=0, example="0")
    resize: str = _spec("str", choices=RESIZE_MODES)
    name: str = _spec("str", optional=True, example="textures")


# (config path, schema, closed: unknown keys are errors)
SCHEMAS: list[tuple[str, type, bool]] = [
    ("", RootSchema, False), ("synth", SynthSchema, True), ("train", TrainSchema, True),
    ("features", FeaturesSchema, True), ("collect_stats", CollectStatsSchema, True),
    ("evaluate", EvaluateSchema, True), ("score", ScoreSchema, True), ("report", ReportSchema, True), ("data", DataSchema, False),
    ("ipm", IPMSchema, True),
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
        check_value(f"{prefix}{key}", node[key], known[key])


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
    root = Path(str(value)).expanduser()
    if root.exists() and not root.is_dir():
        raise C2IRError(f"cache_root={value} is a file, not a folder; set cache_root to a writable folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise C2IRError(f"cache_root={value} is not a writable folder ({exc.strerror or exc}); "
                        "set cache_root to a writable folder") from None


# stages that read the ID test set and the OOD sets, and the one that scores a user's folder
DATA_STAGES = ("train", "evaluate", "run")
OOD_STAGES = ("evaluate", "run")


def _folder(path: Any) -> Path | None:
    return Path(str(path)).expanduser() if path else None


def check_inputs(cfg: DictConfig) -> None:
    """Files and folders named by the config exist, checked before any model is built or torch imported.

    A missing checkpoint or data folder is then reported in about a second, not after a minute of training
    or synthesis. Checked where a stage will read them: the checkpoint always; an ImageFolder ID set's
    `data.root` for train/evaluate/run; folder OOD sets for evaluate/run; `score.input` for score. Sets that
    come from a shared archive, a download or torchvision are left to their source, and the stages check
    again where they open the files (the API does not come through here). With a cluster launcher this runs
    on the submitting host: paths must exist there too.
    """
    stage = str(cfg.get("stage") or "run")
    ckpt = OmegaConf.select(cfg, "model.checkpoint")
    if ckpt and not _folder(ckpt).is_file():
        raise C2IRError(f"checkpoint not found: {_folder(ckpt)}; set model.checkpoint to an existing file")
    data = cfg.get("data") or {}
    root = data.get("root")
    if stage in DATA_STAGES and data.get("source") == "imagefolder" and (root or not data.get("archive")) \
            and not (root and _folder(root).is_dir()):
        layout = data.get("layout") or "<root>/<split>/<class>/*.jpg"
        raise C2IRError(f"{data.get('name', 'data')}: folder not found: {_folder(root)} (expected layout: {layout}); "
                        "set data.root")
    for key, ood in (cfg.get("ood") or {}).items() if stage in OOD_STAGES else ():
        root = ood.get("root")
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
    if not cfg.get("detectors"):
        raise C2IRError("no detectors selected (detectors=[]); pass at least one, e.g. detectors=[c2ir,energy,msp]")
    check_inputs(cfg)
    return cfg
