"""Checkpoint loading: untrusted input, so `weights_only=True` unless the user opts out by name.

`.safetensors` files (timm's and Hugging Face's weights) are read with safetensors, which holds tensors only.

Accepts the common wrappers (`state_dict`, `model`, `net`, `model_state_dict`, a bare
state dict) and strips a DataParallel `module.` prefix. A mismatch with the model is
reported with the missing and unexpected keys, never as a raw traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from c2ir.errors import C2IRError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")


def _short(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a flat state dict of tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise C2IRError(f"checkpoint not found: {path}; set model.checkpoint to an existing file")
    if path.suffix == ".safetensors":  # tensors only by construction (timm / Hugging Face weights): nothing to unpickle
        from safetensors.torch import load_file

        try:
            return extract_state_dict(load_file(str(path)), path)
        except C2IRError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise C2IRError(f"cannot read safetensors checkpoint {path} ({type(exc).__name__}); "
                            "set model.checkpoint to an intact .safetensors or torch.save file") from exc
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save zip archive, or a pickle
        raise C2IRError(f"not a PyTorch checkpoint: {path} (neither a torch.save archive nor a pickle); "
                        "set model.checkpoint to a file written by torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler raises many types on foreign input
        if not trust:
            text = str(exc).strip()
            reason = text.splitlines()[0].split(". ")[0][:160] if text else type(exc).__name__
            raise C2IRError(
                f"refusing to unpickle {path}: it is not a plain tensor checkpoint ({reason}); "
                "if you trust its source, pass model.trust_checkpoint=true"
            ) from exc
        log.warning("loading %s with weights_only=False because model.trust_checkpoint=true", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - any failure here means the file is not a checkpoint
            raise C2IRError(f"cannot read checkpoint {path}: {exc2}") from exc2
    return extract_state_dict(obj, path)


def extract_state_dict(obj: object, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Unwrap the usual containers and strip a `module.` prefix."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise C2IRError(f"{path} holds no state dict (looked for a tensor dict or keys {list(WRAPPER_KEYS)}); point "
                        f"model.checkpoint at a file saved with torch.save(model.state_dict(), path)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, model_name: str) -> None:
    """Strict load that names missing / unexpected / mis-shaped keys in one line."""
    own = model.state_dict()
    ignorable = lambda k: k.endswith("num_batches_tracked")  # noqa: E731 - absent in many old checkpoints
    missing = sorted(k for k in own if k not in state and not ignorable(k))
    unexpected = sorted(k for k in state if k not in own and not ignorable(k))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_short(shapes, 3)}")
        raise C2IRError(
            f"checkpoint {source} does not fit model={model_name}: {'; '.join(parts)}; "
            "choose the model= config that matches the checkpoint (and model.num_classes)"
        )
    filled = {k: state[k] if k in state else own[k] for k in own}
    model.load_state_dict(filled, strict=True)
