"""The folder a fitted API detector is saved to: written atomically, read back only when intact.

Why: a saved detector is a file the user moves around; a flipped byte, a hand edit of its threshold,
a truncated state or a load onto another model used to give wrong scores silently. Now
`detector.json` records the SHA-256 of `state.safetensors`, a fingerprint of the model the detector
was fitted on (`inputs.model_fingerprint`) and a hash of its own content; `read` checks all three,
every field's type and range, and that the state is finite, and says in one line what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2ir.cache import atomic_save_tensors, atomic_write_json, canonical_json, file_sha256
from c2ir.errors import C2IRError
from c2ir.inputs import check_writable_folder, model_fingerprint

FORMAT_VERSION = 2  # 2: content hashes and the model's fingerprint
CONFIG, STATE = "detector.json", "state.safetensors"
HASHED = ("config_sha256",)  # the field that holds the hash of all the others


def _config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in cfg.items() if k not in HASHED}).encode()).hexdigest()


def write(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor], model: nn.Module) -> Path:
    """`state.safetensors` then `detector.json` (with the hashes) into `folder`, each atomically."""
    folder = check_writable_folder(Path(folder), "save()")
    atomic_save_tensors(folder / STATE, {k: v.contiguous() for k, v in state.items()})
    cfg = {**config, "format": FORMAT_VERSION, "state_sha256": file_sha256(folder / STATE),
           "model_sha256": model_fingerprint(model)}
    atomic_write_json(folder / CONFIG, {**cfg, "config_sha256": _config_hash(cfg)})
    return folder


# field -> (accepted types, may be None, extra check) of detector.json
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


FIELDS: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "name": ((str,), False, None), "type": ((str,), False, None), "params": ((dict,), False, None),
    "layers": ((list,), False, lambda v: all(isinstance(x, str) for x in v)),
    "layer_patterns": ((list,), True, lambda v: all(isinstance(x, str) for x in v)),
    "head": ((str,), True, None), "num_classes": ((int,), True, lambda v: v >= 1),
    "input_shape": ((list,), True, lambda v: len(v) == 3 and all(isinstance(x, int) and x >= 1 for x in v)),
    "mean": ((list,), True, lambda v: all(_finite(x) for x in v)),
    "std": ((list,), True, lambda v: all(_finite(x) and x > 0 for x in v)),
    "synth": ((dict,), False, None), "mgi": ((str,), False, None),
    "spatial_grid": ((int,), False, lambda v: v >= 0), "max_spatial_per_class": ((int,), False, lambda v: v >= 0),
    "tpr": ((float, int), False, lambda v: 0 < v < 1), "batch_size": ((int,), False, lambda v: v >= 1),
    "seed": ((int,), False, lambda v: v >= 0), "threshold": ((float, int), True, _finite),
    "threshold_source": ((str,), True, None),
    "layer_weights": ((list,), True, lambda v: all(_finite(x) for x in v)),
}


def check_fields(cfg: dict[str, Any], where: Path) -> None:
    """Every field of a detector.json present, of its type and in its range."""
    for name, (types, optional, ok) in FIELDS.items():
        if name not in cfg:
            raise C2IRError(f"{where}: field {name!r} is missing; the file is damaged: save the detector again")
        v = cfg[name]
        if v is None and optional:
            continue
        if isinstance(v, bool) or not isinstance(v, types) or (ok is not None and not ok(v)):
            raise C2IRError(f"{where}: {name}={v!r} is not valid; the file is damaged or was edited: "
                            "save the detector again")


def read(folder: Path, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state) of a saved detector, verified; one C2IRError line saying what is wrong otherwise."""
    folder = Path(folder)
    cfg_path, state_path = folder / CONFIG, folder / STATE
    if not cfg_path.is_file() or not state_path.is_file():
        raise C2IRError(f"{folder} holds no saved detector ({CONFIG} and {STATE}); pass the folder given to save()")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise C2IRError(f"{cfg_path} is not readable JSON ({type(exc).__name__}: {exc}); the file is damaged: "
                        "save the detector again") from None
    if not isinstance(cfg, dict):
        raise C2IRError(f"{cfg_path} holds a {type(cfg).__name__}, not a saved detector; save the detector again")
    if cfg.get("format") != FORMAT_VERSION:
        raise C2IRError(f"{folder}: saved detector format {cfg.get('format')!r} is not {FORMAT_VERSION} (format 1, "
                        "from an older c2ir, has no content hashes); fit and save it again")
    if cfg.get("config_sha256") != _config_hash(cfg):
        raise C2IRError(f"{cfg_path} does not match its content hash (edited or corrupted); save the detector again")
    check_fields(cfg, cfg_path)
    if file_sha256(state_path) != cfg.get("state_sha256"):
        raise C2IRError(f"{state_path} does not match the content hash in {CONFIG} (truncated, corrupted or "
                        "replaced); save the detector again")
    if model_fingerprint(model) != cfg.get("model_sha256"):
        raise C2IRError(f"{folder}: this detector was fitted on another model (its weights, buffers or input "
                        "channels differ from the model passed to load()); pass the model it was fitted on, or fit again")
    from safetensors.torch import load_file

    try:
        state = load_file(str(state_path))
    except Exception as exc:  # noqa: BLE001 - safetensors' own error types
        raise C2IRError(f"{state_path} is not a readable safetensors file ({type(exc).__name__}); save the "
                        "detector again") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise C2IRError(f"{state_path}: tensor {bad[0]} holds NaN or infinite values; save the detector again")
    return cfg, state


def saved_config(fitted: Any, name: str, settings: dict[str, Any], tpr: float) -> dict[str, Any]:
    """detector.json's fields (c2ir.saved adds the format and the content hashes)."""
    det, info = fitted.detector, fitted.threshold_info
    return {"name": name, "type": type(det).__name__, "params": det.params, **settings, "tpr": float(tpr),
            "threshold": fitted.threshold, "threshold_source": fitted.threshold_source,
            "threshold_info": None if info is None else info.to_json(), "layer_weights": fitted.layer_weights}


def write_saved(out: Any, fitted: Any, name: str, settings: dict[str, Any], tpr: float, model: Any) -> None:
    """The saved-detector format (`detector.json` + `state.safetensors`): on disk through `c2ir.saved` (content
    hashes and the model's fingerprint, so `c2ir.load_detector` reads `c2ir score`'s artifact), in memory as is."""
    config, state = saved_config(fitted, name, settings, tpr), fitted.detector.state()
    folder = getattr(out, "path", None)
    if folder is not None:
        write(Path(folder), config, state, model)
        return
    out.save_tensors(STATE, {k: v.contiguous() for k, v in state.items()})
    out.save_json(CONFIG, {**config, "format": FORMAT_VERSION})
