"""One forward pass -> logits, penultimate features, per-layer pooled features, BN-input means.

Hooks are registered on the selected layers for the duration of a `with` block and
removed afterwards. Each hook reduces its activation immediately (channel-wise spatial
mean, and optionally an adaptive-average-pooled grid of spatial vectors for the IPMs
that compare distributions), so memory stays proportional to channels, not pixels.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from c2ir.data.imageset import ImageSet, Normalizer
from c2ir.errors import C2IRError

FeatureBundle = dict[str, torch.Tensor]
"""Flat tensor dict: `logits`, `penultimate`, `labels` (if any), `layer/<name>` (N, C),
`spatial/<name>` (N, P, C) when requested, and `bn/<name>` (N, C) BN-input means."""


def select_layers(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Module names matching any regex (full match), in forward (registration) order."""
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for pattern in patterns:
        rx = re.compile(pattern)
        hits = [n for n in names if rx.fullmatch(n)]
        if not hits:
            sample = ", ".join(n for n in names if "." not in n)[:200]
            raise C2IRError(f"layer pattern {pattern!r} matches no module of this model (top-level modules: {sample})")
        chosen += [h for h in hits if h not in chosen]
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


def bn_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class FeatureHooks:
    """Context manager collecting reduced activations of named modules during forward passes."""

    def __init__(self, model: nn.Module, layers: Sequence[str], head: nn.Linear,
                 spatial_grid: int = 0, with_bn: bool = True):
        self.model, self.layers, self.head = model, list(layers), head
        self.spatial_grid, self.with_bn = int(spatial_grid), with_bn
        self.out: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "FeatureHooks":
        modules = dict(self.model.named_modules())
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._layer_hook(name)))
        if self.with_bn:
            for name in bn_layers(self.model):
                self._handles.append(modules[name].register_forward_hook(self._bn_hook(name)))
        self._handles.append(self.head.register_forward_hook(self._head_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _layer_hook(self, name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            self.out[f"layer/{name}"] = out.mean(dim=(2, 3)) if out.dim() == 4 else out
            if self.spatial_grid and out.dim() == 4:
                grid = F.adaptive_avg_pool2d(out, self.spatial_grid)
                self.out[f"spatial/{name}"] = grid.flatten(2).transpose(1, 2)  # (B, P, C)
        return hook

    def _bn_hook(self, name: str):
        def hook(_m: nn.Module, inp: tuple, _out: torch.Tensor) -> None:
            x = inp[0]
            self.out[f"bn/{name}"] = x.mean(dim=(2, 3)) if x.dim() == 4 else x
        return hook

    def _head_hook(self, _m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        self.out["penultimate"] = inp[0]

    def pop(self) -> dict[str, torch.Tensor]:
        out, self.out = self.out, {}
        return out


def batches(n: int, batch_size: int) -> Iterable[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def extract_features(model: nn.Module, images: ImageSet | torch.Tensor, normalizer: Normalizer,
                     layers: Sequence[str], head: nn.Linear, *, batch_size: int = 256,
                     device: torch.device | str = "cpu", spatial_grid: int = 0, with_bn: bool = True,
                     desc: str = "features", shard: tuple[int, int] | None = None) -> FeatureBundle:
    """Run the model once over `images` and return the FeatureBundle (float32, on CPU).

    `shard=(rank, world)` processes only every world-th batch, for distributed evaluation.
    """
    model.eval()
    data = images.images if isinstance(images, ImageSet) else images
    chunks: dict[str, list[torch.Tensor]] = {}
    spans = list(batches(len(data), batch_size))
    if shard is not None:
        spans = spans[shard[0]::shard[1]]
    with FeatureHooks(model, layers, head, spatial_grid, with_bn) as hooks:
        for span in tqdm(spans, desc=desc, leave=False, disable=not sys.stderr.isatty()):
            x = normalizer(data[span].to(device))
            logits = model(x)
            out = hooks.pop()
            out["logits"] = logits
            for k, v in out.items():
                v = v.float().cpu()
                chunks.setdefault(k, []).append(v.half() if k.startswith("spatial/") else v)
    if not chunks:
        return {}
    bundle = {k: torch.cat(v) for k, v in chunks.items()}
    if isinstance(images, ImageSet) and images.labels is not None and shard is None:
        bundle["labels"] = images.labels.clone()
    return bundle


def layer_names(bundle: FeatureBundle, prefix: str = "layer/") -> list[str]:
    return [k[len(prefix):] for k in bundle if k.startswith(prefix)]
