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
        raise C2IRError(f"device={name!r} is not a device name; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise C2IRError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    return dev
