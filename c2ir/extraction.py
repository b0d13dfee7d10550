"""One forward pass -> logits, penultimate features, per-layer pooled features, BN-input means.

Hooks are registered on the selected layers for the duration of a `with` block and
removed afterwards. Each hook reduces its activation immediately (channel-wise spatial
mean, and optionally an adaptive-average-pooled grid of spatial vectors for the IPMs
that compare distributions), so memory stays proportional to channels, not pixels.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from c2ir.data.imageset import ImageSet, Normalizer, unit_pixels
from c2ir.data.loader import BatchStream, batch_spans
from c2ir.errors import C2IRError
from c2ir.models.state import frozen_eval
from c2ir.inputs import check_layer_pattern

FeatureBundle = dict[str, torch.Tensor]
"""Flat tensor dict: `logits`, `penultimate`, `labels` (if any), `layer/<name>` (N, C),
`spatial/<name>` (N, P, C) when requested, and `bn/<name>` (N, C) BN-input means."""


def select_layers(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Module names matching any regex (full match), in forward (registration) order."""
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for pattern in patterns:
        rx = check_layer_pattern(pattern)
        hits = [n for n in names if rx.fullmatch(n)]
        if not hits:
            sample = ", ".join(n for n in names if "." not in n)[:200]
            raise C2IRError(f"layer pattern {pattern!r} matches no module of this model (top-level modules: {sample})")
        chosen += [h for h in hits if h not in chosen]
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


ForwardHook = Callable[[nn.Module, tuple, torch.Tensor], None]


class ForwardHooks:
    """Forward hooks registered while a `with` block runs and removed when it ends, even on an
    error, so a borrowed model never keeps a hook. The one hook pattern of feature extraction
    (`FeatureHooks`), synthesis's BatchNorm-statistics loss and the MGI gradient pass: pass the
    (module, hook) pairs, or subclass and override `hooks()`."""

    def __init__(self, hooks: Iterable[tuple[nn.Module, ForwardHook]] = ()) -> None:
        self._pairs = hooks
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def hooks(self) -> Iterable[tuple[nn.Module, ForwardHook]]:
        return self._pairs

    def __enter__(self) -> "ForwardHooks":
        self._handles = [module.register_forward_hook(fn) for module, fn in self.hooks()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def bn_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that keep running statistics, in registration order (the one
    place BN layers are found: synthesis, NMD and the BN-input hooks all use it)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def require_batchnorm(model: nn.Module, name: str) -> None:
    """`c2ir run` synthesises impressions for every detector, and impressions match BatchNorm statistics:
    a model without BatchNorm layers is one line naming what needs them, before anything is trained."""
    if not bn_layers(model):
        raise C2IRError(f"model {name} has no BatchNorm layers with running statistics: the impressions every c2ir "
                        "run fits on are synthesised to match them (C2IR and the *_imp detectors fit on impressions, "
                        "nmd and gaia read BatchNorm layers); use a model with BatchNorm (e.g. model.name=resnet18), or "
                        "a logit detector from the Python API: c2ir.detector('energy', model).fit()")


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def candidate_layers(model: nn.Module) -> list[str]:
    """The feature maps C2IR can compare, in forward (registration) order.

    Blocks: the outermost modules (not the model itself, not a plain container) that own a
    BatchNorm child, e.g. residual blocks; their output is the block's feature map. A flat
    model without such blocks gives the activation registered right after each BatchNorm
    (or the BatchNorm itself when none follows, or when that activation is shared).
    """
    bn = set(bn_layers(model))
    owners: list[str] = []
    for name, m in model.named_modules():
        if not name or isinstance(m, CONTAINERS) or any(name.startswith(o + ".") for o in owners):
            continue
        if any(f"{name}.{c}" in bn for c, _ in m.named_children()):
            owners.append(name)
    if owners:
        return owners
    modules = list(model.named_modules())
    index = {n: i for i, (n, _) in enumerate(modules)}
    out = []
    for b in bn_layers(model):
        nxt = modules[index[b] + 1] if index[b] + 1 < len(modules) else None
        out.append(nxt[0] if nxt is not None and isinstance(nxt[1], ACTIVATIONS) else b)
    shared = {n for n in out if out.count(n) > 1}
    return [b if o in shared else o for b, o in zip(bn_layers(model), out)]


def auto_layers(model: nn.Module) -> list[str]:
    """Layers chosen without data for a model outside the zoo: the middle of `candidate_layers`.

    With n >= 4 candidates, keep indices [n // 3, n - n // 4): drop the first third (stem and
    early blocks: low-level statistics that OOD images share, per-layer AUROC 48-84% on the
    CIFAR ResNet-20 vs 95-100% for layer2) and the last quarter (the final block's deviation
    is inverted for OOD, AUROC 26-40% at layer3.2; docs/BENCHMARKS.md). On ResNet-20 this
    gives exactly the measured best set (layer2.0-2.2, layer3.0); with n <= 3 (small CNNs)
    every candidate is kept.
    """
    cands = candidate_layers(model)
    if not cands:
        raise C2IRError("the model has no BatchNorm layer with running statistics, so there are no feature maps "
                        "C2IR can choose automatically; pass layers=[...] (module-name regexes)")
    n = len(cands)
    return cands if n <= 3 else cands[n // 3: n - n // 4]


AUTO_LAYERS = "auto"  # a layer set `[auto]`: chosen by `auto_layers` (models outside the zoo, e.g. timm's)


def resolve_layers(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The layers of a configured layer set: `select_layers`, or `auto_layers` for `[auto]`."""
    if [str(p) for p in patterns] == [AUTO_LAYERS]:
        return auto_layers(model)
    return select_layers(model, patterns)


class FeatureHooks(ForwardHooks):
    """Context manager collecting reduced activations of named modules during forward passes."""

    def __init__(self, model: nn.Module, layers: Sequence[str], head: nn.Linear,
                 spatial_grid: int = 0, with_bn: bool = True):
        self.model, self.layers, self.head = model, list(layers), head
        self.spatial_grid, self.with_bn = int(spatial_grid), with_bn
        self.out: dict[str, torch.Tensor] = {}
        super().__init__()

    def hooks(self) -> list[tuple[nn.Module, ForwardHook]]:
        modules = dict(self.model.named_modules())
        hooks = [(modules[name], self._layer_hook(name)) for name in self.layers]
        if self.with_bn:
            hooks += [(modules[name], self._bn_hook(name)) for name in bn_layers(self.model)]
        return [*hooks, (self.head, self._head_hook)]

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
    """Consecutive slices of at most `batch_size` (detectors that batch tensors themselves)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


T = TypeVar("T")


def gradient_batches(model: nn.Module, images: torch.Tensor, step: Callable[[torch.Tensor, slice], T], *,
                     batch_size: int = 256, device: torch.device | str = "cpu", desc: str = "gradients") -> list[T]:
    """`step(x, span)` for each batch of `images`, x = that batch as float pixels in [0, 1] on `device`
    requiring a gradient, with the model in eval mode and its parameters frozen (both restored after):
    the one gradient pass of ODIN, GAIA and MGI (gradients flow to inputs and activations, never into
    the caller's `.grad`)."""
    with frozen_eval(model):
        spans = list(batches(len(images), batch_size))
        return [step(unit_pixels(images[span].to(device)).requires_grad_(True), span)
                for span in tqdm(spans, desc=desc, leave=False, disable=not sys.stderr.isatty())]


@torch.no_grad()
def extract_features(model: nn.Module, images: ImageSet | torch.Tensor | BatchStream, normalizer: Normalizer | None,
                     layers: Sequence[str], head: nn.Linear, *, batch_size: int = 256,
                     device: torch.device | str = "cpu", spatial_grid: int = 0, with_bn: bool = True,
                     desc: str = "features", shard: tuple[int, int] | None = None) -> FeatureBundle:
    """Run the model once over `images` and return the FeatureBundle (float32, on CPU).

    `images` is a tensor, an in-memory ImageSet, or a `BatchStream` (any dataset, decoded in batches
    by worker processes; its labels come with the batches and it was sharded when it was built).
    `normalizer=None` takes `images` as model inputs already (the public API's normalised batches).
    `shard=(rank, world)` processes only every world-th batch, for distributed evaluation.
    The model's training flags and `requires_grad` are restored afterwards.
    """
    if not isinstance(images, BatchStream):
        tensor = images.images if isinstance(images, ImageSet) else images
        # labels only for a whole ImageSet: a shard's labels are gathered by the caller
        labels = images.labels if isinstance(images, ImageSet) and shard is None else None
        mine = None if shard is None else list(range(len(batch_spans(len(tensor), batch_size))))[shard[0]::shard[1]]
        images = BatchStream(ImageSet(desc, tensor, labels), batch_size, batches=mine)
    with frozen_eval(model):
        return _extract(model, images, normalizer, layers, head, device, spatial_grid, with_bn, desc)


def _extract(model: nn.Module, stream: BatchStream, normalizer: Normalizer | None,
             layers: Sequence[str], head: nn.Linear, device: torch.device | str,
             spatial_grid: int, with_bn: bool, desc: str) -> FeatureBundle:
    # rows are written into tensors allocated once for the whole set (at most every listed item), not
    # concatenated at the end: the features' peak memory is the result's size, not twice it
    rows = sum(len(span) for span in stream.spans)
    out_rows: dict[str, torch.Tensor] = {}
    filled = 0
    labels: list[torch.Tensor] = []
    non_blocking = stream.pin_memory
    with FeatureHooks(model, layers, head, spatial_grid, with_bn) as hooks:
        for batch in tqdm(stream, desc=desc, leave=False, disable=not sys.stderr.isatty()):
            if batch.labels is not None:
                labels.append(batch.labels)
            if not len(batch.images):
                continue
            x = batch.images.to(device, non_blocking=non_blocking)
            x = normalizer(x) if normalizer is not None else x
            logits = model(x)
            out = hooks.pop()
            out["logits"] = logits
            for k, v in out.items():
                v = v.float().cpu()
                v = v.half() if k.startswith("spatial/") else v
                if k not in out_rows:
                    out_rows[k] = torch.empty((rows, *v.shape[1:]), dtype=v.dtype)
                out_rows[k][filled:filled + len(v)] = v
            filled += len(x)
    if not out_rows:
        return {}
    # unreadable files leave rows unused: copy only then (a slice would keep the whole buffer)
    bundle = {k: v if filled == rows else v[:filled].clone() for k, v in out_rows.items()}
    if labels:
        bundle["labels"] = torch.cat(labels)
    return bundle


def layer_names(bundle: FeatureBundle, prefix: str = "layer/") -> list[str]:
    return [k[len(prefix):] for k in bundle if k.startswith(prefix)]
