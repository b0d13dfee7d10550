"""Helpers shared by the benchmark scripts: the benchmark model and paired timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from omegaconf import OmegaConf

from c2ir.models import build_model, load_checkpoint


def bench_model(arch: str, device: torch.device) -> torch.nn.Module:
    """ResNet-20 (shared fine-tuned weights when available; timing does not depend on them) or ResNet-34."""
    if arch == "resnet20":
        cfg = OmegaConf.create({"arch": "cifar_resnet", "depth": 20, "num_classes": 10, "in_channels": 3,
                                "name": "resnet20", "trust_checkpoint": False})
        model = build_model(cfg)
        try:
            from c2ir.data.shared import shared_model

            load_checkpoint(model, cfg, str(shared_model("cifar10jpeg-resnet20.pt")))
        except Exception:  # noqa: BLE001 - random weights time the same
            pass
    else:
        model = build_model(OmegaConf.create({"arch": arch, "num_classes": 10, "in_channels": 3, "name": arch}))
    return model.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired(a: Callable[[], None], b: Callable[[], None], repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Alternate a and b `repeats` times (order flipped every other round) and return their times."""
    ta, tb = [], []
    for r in range(repeats):
        for which in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            fn, out = which
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    return ta, tb


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(n / d for n, d in zip(num, den))
