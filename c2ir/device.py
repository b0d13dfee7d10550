"""Device selection: nothing in c2ir hard-codes a device; `device=auto` picks CUDA when present."""

from __future__ import annotations

import torch

from c2ir.errors import C2IRError


def resolve_device(name: str = "auto") -> torch.device:
    """Map the `device` config value to a torch.device, failing clearly if it is unavailable."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise C2IRError(f"device={name!r} is not a device name; use auto, cpu, cuda, cuda:N or (on Apple silicon) mps") from exc
    if dev.type not in ("cpu", "cuda", "mps"):   # meta, xpu, ...: tensors without data, or no code path here
        raise C2IRError(f"device={name!r} is not supported; use auto, cpu, cuda, cuda:N or (on Apple silicon) mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise C2IRError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise C2IRError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                        f"use cuda:0 to cuda:{torch.cuda.device_count() - 1} or device=auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise C2IRError(f"device={name!r} but MPS (Apple silicon) is not available here; use device=cpu or device=auto")
    return dev
