"""The one validator: every value of a composed config against its dataclass in `c2ir.schema`.

Types and closed key sets come from the dataclasses (OmegaConf enforces them while Hydra
composes the structured groups; `check_node` enforces them for every node, including those
added with `+key=` and the data-set presets); ranges and choices come from the fields'
metadata (`schema.setting`). Every problem is one line naming the key, the value and what
is valid (`c2ir: error: ...`), raised before Hydra starts a job or torch is imported.
The Python API checks its arguments with the same functions (`check_setting`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import types
import typing
import uuid
from dataclasses import fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from c2ir.errors import C2IRError
from c2ir.imglist import open_imglist  # torch-free, like this module
from c2ir.schema import MODEL_SCHEMAS, UNSET, C2IRConfig, DataConfig, OODConfig
from c2ir.sizes import check_sizes


@lru_cache(maxsize=None)
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _meta(schema: type) -> dict[str, dict[str, Any]]:
    return {f.name: dict(f.metadata) for f in fields(schema)}


def _kind(hint: Any) -> tuple[Any, bool]:
    """(base type, optional) of a field's annotation: int, float, bool, str, 'floats', 'strings', a dataclass,
    or None for what is not checked here (Any, mappings)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        base, _ = _kind(inner[0]) if len(inner) == 1 else (None, True)
        return base, True
    if origin in (list, tuple):
        return ("floats" if args and args[0] is float else "strings"), False
    if hint in (int, float, bool, str) or is_dataclass(hint):
        return hint, False
    return None, False


def _bad(path: str, value: Any, want: str, example: str) -> C2IRError:
    hint = f" (e.g. {path}={example})" if example else ""
    return C2IRError(f"{path}={value!r} is not valid: it must be {want}{hint}")


def _want(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", "floats": "a list of numbers",
            "strings": "a list of strings"}.get(kind, "a mapping")


def check_value(path: str, value: Any, kind: Any, optional: bool, meta: dict[str, Any]) -> Any:
    """The value converted to its declared kind, or a C2IRError naming it and what is valid."""
    ex = meta.get("example", "")
    if value is None:
        if optional:
            return None
        raise _bad(path, value, _want(kind), ex)
    if kind is bool:
        if not isinstance(value, bool):
            raise _bad(path, value, "true or false", "true")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise _bad(path, value, "a string", ex)
        if meta.get("choices") and value not in meta["choices"]:
            raise _bad(path, value, "one of " + ", ".join(meta["choices"]), meta["choices"][0])
        return value
    if kind in ("floats", "strings"):
        if not isinstance(value, (list, tuple, ListConfig)) or (meta.get("length") and len(value) != meta["length"]):
            raise _bad(path, value, f"a list of {meta['length']} numbers" if meta.get("length") else _want(kind), ex)
        item = float if kind == "floats" else str
        return [check_value(f"{path}[{i}]", v, item, False, {**meta, "example": "", "length": None})
                for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, value, _want(kind), ex)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise _bad(path, value, "an integer", ex)
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise _bad(path, value, "a finite number", ex)
    return _check_range(path, value, kind, meta, ex)


def _check_range(path: str, value: float, kind: Any, meta: dict[str, Any], ex: str) -> Any:
    lo, hi = meta.get("lo"), meta.get("hi")
    below = lo is not None and (value < lo or (meta.get("lo_open") and value == lo))
    above = hi is not None and (value > hi or (meta.get("hi_open") and value == hi))
    if below or above:
        parts = []
        if lo is not None:
            parts.append(f"> {lo}" if meta.get("lo_open") else f">= {lo}")
        if hi is not None:
            parts.append(f"< {hi}" if meta.get("hi_open") else f"<= {hi}")
        raise _bad(path, value, f"{'an integer' if kind is int else 'a number'} {' and '.join(parts)}", ex)
    return value


def check_setting(path: str, value: Any, schema: type, name: str) -> Any:
    """One value against field `name` of `schema` (the Python API's arguments)."""
    kind, optional = _kind(_hints(schema)[name])
    return check_value(path, value, kind, optional, _meta(schema)[name])


def did_you_mean(name: str, choices: Any) -> str:
    """' (did you mean X?)' for the closest of `choices` to a mistyped `name` (difflib's ratio >= 0.75), else ''."""
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def check_node(path: str, node: Any, schema: type, extra_keys: tuple[str, ...] = ()) -> None:
    """Every key of `node` is a field of `schema` (or one of `extra_keys`) with a valid value;
    dataclass-typed fields are checked recursively."""
    if not isinstance(node, (DictConfig, dict)):
        raise C2IRError(f"{path or 'the config'} must be a mapping, got {node!r}")
    hints, meta = _hints(schema), _meta(schema)
    prefix = f"{path}." if path else ""
    for key in node:
        if key in extra_keys:
            continue
        if key not in hints:
            raise C2IRError(f"unknown config key {prefix}{key}{did_you_mean(str(key), hints)}; valid keys of "
                            f"{path or 'the config'}: {', '.join(hints)}")
        kind, optional = _kind(hints[key])
        if is_dataclass(kind):
            check_node(f"{prefix}{key}", node[key], kind)
        elif kind is not None:
            check_value(source_key(node, key) or f"{prefix}{key}", node[key], kind, optional, meta[key])


def neutral_fields(cfg: Any) -> dict[str, Any]:
    """{dotted path: key-neutral value} of the fields declared with one (c2ir.schema's docstring), for the
    root schema and the config's model architecture."""
    out: dict[str, Any] = {}

    def walk(prefix: str, schema: type) -> None:
        for f in fields(schema):
            kind = _kind(_hints(schema)[f.name])[0]
            if is_dataclass(kind):
                walk(f"{prefix}{f.name}.", kind)
            elif f.metadata.get("neutral", UNSET) is not UNSET:
                out[prefix + f.name] = f.metadata["neutral"]

    walk("", C2IRConfig)
    arch = OmegaConf.select(cfg, "model.arch") if OmegaConf.is_config(cfg) else (cfg.get("model") or {}).get("arch")
    if arch in MODEL_SCHEMAS:
        walk("model.", MODEL_SCHEMAS[arch])
    return out


# ----- composition errors, as one line -----------------------------------------------------------------
def explain(exc: BaseException) -> str:
    """A Hydra/OmegaConf composition error reduced to one line naming the key and what is valid."""
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        key, schema = getattr(e, "full_key", None), getattr(e, "object_type", None)
        if not key:
            continue
        leaf = str(key).rsplit(".", 1)[-1]
        if "not in" in str(getattr(e, "msg", "")) or type(e).__name__ in ("ConfigKeyError", "ConfigAttributeError"):
            parent = str(key).rpartition(".")[0]
            if re.fullmatch(r"detectors\.[\w-]+\.\w+", str(key)):   # a parameter its detector config leaves at the default
                return (f"unknown config key {key}: a detector parameter that configs/detectors/ does not set takes "
                        f"++ (++{key}=...; docs/API.md lists each detector's parameters)")
            hints = _hints(schema) if is_dataclass(schema) else {}
            valid = f"; valid keys of {parent or 'the config'}: {', '.join(hints)}" if hints else ""
            if not hints and parent in ("detectors", "ood"):   # a mistyped detector or OOD set: its group's names
                from c2ir.config import config_dir

                hints = {p.stem: None for p in (config_dir() / parent).glob("*.yaml")}
            return f"unknown config key {key}{did_you_mean(leaf, hints)}{valid}"
        m = re.search(r"While dereferencing interpolation '\$\{([A-Za-z_][\w.]*)\}': Value '([^']*)'", str(e))
        if m:   # a value that only copies another key (synth.flip: ${data.flip_invariant}): name the key typed
            kind = _kind(_hints(schema).get(leaf, Any))[0] if is_dataclass(schema) else None
            return str(_bad(m[1], m[2], _want(kind), ""))
        if type(e).__name__ == "ValidationError":
            kind = _kind(_hints(schema).get(leaf, Any))[0] if is_dataclass(schema) else None
            example = _meta(schema).get(leaf, {}).get("example", "") if is_dataclass(schema) else ""
            return str(_bad(str(key), getattr(e, "value", None), _want(kind), example))
    text = str(exc).strip()
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        return (f"unknown config key {key}; check the spelling (c2ir <stage> --cfg job lists every key)"
                f"{'' if '.' not in key else f', or add a new key on purpose with +{key}=...'}")
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{first.rstrip('.')} (c2ir <stage> --cfg job shows the composed config)"


# ----- the composed config ------------------------------------------------------------------------------
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


def check_cache_root(value: Any, keep: bool = True) -> None:
    """The artifact store's folder must be one this process can create and write into: tried, not guessed; with
    `keep=False` the folders the probe made are removed again (the stages create them when they write)."""
    if value is None or not str(value).strip():
        raise C2IRError(f"cache_root={value!r} is empty; set cache_root to a writable folder (e.g. cache_root=outputs/cache)")
    try:
        folder = Path(str(value)).expanduser()
    except RuntimeError as exc:   # ~nosuchuser
        raise C2IRError(f"cache_root={value}: {exc}; set cache_root to a writable folder") from None
    problem = writable_problem(folder, keep=keep)
    if problem:
        raise C2IRError(f"cache_root={value} {problem}; set cache_root to a writable folder")


def writable_problem(folder: Path, keep: bool = True) -> str | None:
    """Why `folder` is not (and cannot be made) a folder this process writes into, or None: tried, not guessed
    (a probe file is created and removed). `keep=False` also removes the folders the probe created, for a check
    that runs before the rest of the config is known to be valid (an error then leaves nothing behind)."""
    try:   # one stat (exists + is_dir is two, and another process's probe may remove the folder in between)
        if not stat.S_ISDIR(folder.stat().st_mode):
            return "is a file, not a folder"
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"is not a writable folder ({exc.strerror or exc})"
    folder = Path(os.path.abspath(folder))   # `a/b/../c`: the folders listed below are the ones mkdir makes
    made = [] if keep else [p for p in (folder, *folder.parents) if not p.exists()]   # the probe's folders, deepest first
    try:
        probe = folder / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"   # pids repeat across hosts
        for attempt in range(5):   # another process's probe (torchrun ranks, sweep jobs) may remove the folder in between
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"")
                break
            except (FileNotFoundError, FileExistsError):   # removed under mkdir's parents= or before the write
                if attempt == 4:
                    raise
        probe.unlink(missing_ok=True)
    except OSError as exc:
        return f"is not a writable folder ({exc.strerror or exc})"
    finally:
        for p in made:
            try:
                p.rmdir()
            except OSError:
                break
    return None


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


def check_spatial_grid(cfg: DictConfig) -> None:
    """A grid of spatial vectors finer than the input's pixels samples nothing new and only multiplies memory
    (features.spatial_grid=1000 asks for a million vectors per image and layer)."""
    grid, size = OmegaConf.select(cfg, "features.spatial_grid"), OmegaConf.select(cfg, "data.image_size")
    if isinstance(grid, int) and isinstance(size, int) and grid > size:
        raise C2IRError(f"features.spatial_grid={grid} is finer than the {size}x{size} input (data.image_size); "
                        f"choose at most {size} (e.g. features.spatial_grid=4)")


def needs_quotes(typed: str) -> str:
    """The one line for an override Hydra's grammar cannot read because of a character in its value."""
    key = typed.split("=", 1)[0].lstrip("+~") if "=" in typed else "key"
    return (f"cannot parse {typed!r}: values with non-ASCII letters, spaces or other special characters must be "
            f"quoted for Hydra, e.g. \"{key}='...'\" (the double quotes for the shell)")


def check_training(cfg: DictConfig) -> None:
    """Training values that only mean something with others: fine-tuning needs weights to start from (without
    them the model trained from scratch, silently), and the random crop's padding must be smaller than the image
    (train.pad=100 on 8x8 digits trained on almost nothing but padding)."""
    train, model = cfg.get("train"), cfg.get("model")
    if not isinstance(train, DictConfig) or not isinstance(model, DictConfig):
        return
    published = model.get("arch") == "torchvision" and model.get("weights")
    if train.get("finetune") and not model.get("checkpoint") and not published:
        raise C2IRError("train.finetune=true needs weights to start from: set model.checkpoint=<file> (or use a "
                        "torchvision model with model.weights); without them the model would train from scratch")
    pad, size = train.get("pad"), OmegaConf.select(cfg, "data.image_size")
    if isinstance(pad, int) and isinstance(size, int) and pad >= size:
        raise C2IRError(f"train.pad={pad} is not smaller than the {size}x{size} input (data.image_size): the random "
                        f"crops would be mostly padding; choose less than {size} (null: {max(1, size // 8)} for this size)")


# stages that read the ID test set and the OOD sets, and the one that scores a user's folder
DATA_STAGES = ("train", "evaluate", "run")
OOD_STAGES = ("evaluate", "run")


def _folder(path: Any) -> Path | None:
    return Path(str(path)).expanduser() if path else None


def checkpoint_format_problem(path: Path) -> None:
    """A checkpoint that is neither a torch.save file (zip archive, or the legacy pickle format) nor a
    safetensors file is one line before any stage runs (reading its first bytes only)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save: zip, or legacy pickle
        return
    if path.suffix == ".safetensors" and len(head) == 9 and head[8:9] == b"{":  # u64 header length, then JSON
        return
    raise C2IRError(f"{path} is not a PyTorch checkpoint (torch.save zip or pickle) or .safetensors file; "
                    "set model.checkpoint to the model's weights file")


def check_inputs(cfg: DictConfig) -> None:
    """Files and folders named by the config exist, checked before any model is built or torch imported.

    A missing checkpoint or data folder is then reported in about a second, not after a minute of training
    or synthesis. Checked where a stage will read them: the checkpoint always; an ImageFolder ID set's
    `data.root` (or one given in place of a shared archive) for train/evaluate/run; folder OOD sets for evaluate/run; image lists in OpenOOD's layout
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
    if ckpt and _folder(ckpt).is_dir():
        raise C2IRError(f"model.checkpoint={_folder(ckpt)} is a folder; set it to the weights file inside it "
                        "(a torch.save .pt/.pth or a .safetensors file)")
    if ckpt and not _folder(ckpt).is_file():
        raise C2IRError(f"checkpoint not found: {_folder(ckpt)}; set model.checkpoint to an existing file")
    if ckpt:
        checkpoint_format_problem(_folder(ckpt))
    data = cfg.get("data") or {}
    root = data.get("root")
    source = data.get("source")
    # a folder the user names (also in place of a shared archive's extraction) is checked here; an unnamed shared
    # or downloadable archive is left to its source
    folder_set = (source == "imagefolder" and (root or not data.get("archive"))) or (source == "shared" and root)
    if stage in DATA_STAGES and folder_set and not (root and _folder(root).is_dir()):
        layout = data.get("layout") or "<root>/<split>/<class>/*.jpg"
        if not root:
            raise C2IRError(f"{data.get('name', 'data')}: data.root is not set; set data.root=<folder> "
                            f"(expected layout: {layout})")
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
                            f"({ood.get('layout') or 'a folder of images'})")
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


def validate(cfg: DictConfig, keep_cache_root: bool = True) -> DictConfig:
    """Check the composed config in place (and drop stale OOD tweaks); raises C2IRError with one line.
    `keep_cache_root=False` (the CLI's check before Hydra starts) removes the folders the cache_root probe made,
    so an error in a later value leaves nothing behind; a job's own check (after torchrun's rendezvous, while
    other ranks may already write there) keeps them."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _validate(cfg, keep_cache_root)
    except OmegaConfBaseException as exc:   # a value read through an interpolation of the wrong type
        raise C2IRError(explain(exc)) from None


def _validate(cfg: DictConfig, keep_cache_root: bool = True) -> DictConfig:
    drop_unselected_ood(cfg)
    check_cache_root(cfg.get("cache_root"), keep=keep_cache_root)
    check_node("", cfg, C2IRConfig, extra_keys=("hydra",))
    arch = OmegaConf.select(cfg, "model.arch")
    if arch not in MODEL_SCHEMAS:
        raise C2IRError(f"model.arch={arch!r} is not valid: it must be one of {', '.join(MODEL_SCHEMAS)}")
    check_node("model", cfg.model, MODEL_SCHEMAS[arch])
    check_node("data", cfg.data, DataConfig)
    if not cfg.get("ood"):
        raise C2IRError("no OOD sets selected (ood=[]); pass at least one, e.g. ood=[gaussian_noise] "
                        "or ood=[folder] ood.folder.root=DIR")
    for name in cfg.ood:
        check_node(f"ood.{name}", cfg.ood[name], OODConfig)
    ood_names(cfg)
    check_normalization(cfg)
    check_spatial_grid(cfg)
    check_training(cfg)
    check_sizes(cfg)
    if not cfg.get("detectors"):
        raise C2IRError("no detectors selected (detectors=[]); pass at least one, e.g. detectors=[c2ir,energy,msp]")
    check_inputs(cfg)
    return cfg
