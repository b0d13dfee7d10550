"""Class-conditional feature statistics of impressions (or of real data, for comparison).

Per layer l and class c: the mean and per-channel variance of the channel-wise
spatial-mean activation vectors of class-c samples, and the count; the same
unconditionally; the Ledoit-Wolf-shrunk precision of the within-class covariance shared by
all classes (the `mahalanobis` IPM; layers of at most `MAX_PRECISION_CHANNELS` channels);
optionally a fixed-seed sample of spatial feature vectors per class for the
distribution-level IPMs (MMD, Wasserstein).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MAX_PRECISION_CHANNELS = 4096   # a (C, C) precision per layer above this would cost more memory than it is worth


@dataclass
class LayerStats:
    mean: torch.Tensor          # (K, C) class means
    var: torch.Tensor           # (K, C) per-class per-channel variance
    count: torch.Tensor         # (K,)
    global_mean: torch.Tensor   # (C,)
    global_var: torch.Tensor    # (C,)
    samples: torch.Tensor | None = None  # (K, M, C) spatial vectors per class
    precision: torch.Tensor | None = None  # (C, C) shrunk inverse of the within-class covariance (tied over classes)


@dataclass
class ClassStats:
    layers: list[str]
    per_layer: dict[str, LayerStats]

    def __getitem__(self, layer: str) -> LayerStats:
        return self.per_layer[layer]

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, s in self.per_layer.items():
            out[f"mean/{name}"], out[f"var/{name}"], out[f"count/{name}"] = s.mean, s.var, s.count
            out[f"gmean/{name}"], out[f"gvar/{name}"] = s.global_mean, s.global_var
            if s.samples is not None:
                out[f"samples/{name}"] = s.samples
            if s.precision is not None:
                out[f"precision/{name}"] = s.precision
        return out

    @classmethod
    def from_tensors(cls, layers: Sequence[str], t: Mapping[str, torch.Tensor]) -> "ClassStats":
        return cls(list(layers), {
            n: LayerStats(t[f"mean/{n}"], t[f"var/{n}"], t[f"count/{n}"], t[f"gmean/{n}"], t[f"gvar/{n}"],
                          t.get(f"samples/{n}"), t.get(f"precision/{n}"))
            for n in layers
        })


def shrunk_precision(centred: torch.Tensor) -> torch.Tensor:
    """(C, C) inverse of the Ledoit-Wolf-shrunk covariance of rows `centred` (N, C), already centred (float64).

    Ledoit & Wolf (2004): the sample covariance pulled towards a scaled identity by the shrinkage
    that minimises the expected Frobenius error; well conditioned when N is not much larger than C.
    """
    from sklearn.covariance import LedoitWolf  # imported on use: sklearn costs a second at import

    return torch.from_numpy(LedoitWolf(assume_centered=True).fit(centred.double().numpy()).precision_)


def layer_class_stats(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> LayerStats:
    """Means, variances and counts of rows of `x` (N, C) grouped by `labels` (N,), and the shrunk
    precision of their within-class covariance (pooled over classes; None above MAX_PRECISION_CHANNELS)."""
    x = x.double()
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).double()  # (N, K)
    count = onehot.sum(0)
    safe = count.clamp(min=1)[:, None]
    mean = onehot.T @ x / safe
    var = onehot.T @ (x**2) / safe - mean**2
    gmean, gvar = x.mean(0), x.var(0, unbiased=False)
    empty = count == 0
    if empty.any():
        log.warning("classes %s have no samples; their statistics fall back to the unconditional ones",
                    empty.nonzero().flatten().tolist())
        mean[empty], var[empty] = gmean, gvar
    precision = None
    if x.shape[1] <= MAX_PRECISION_CHANNELS and len(x) > 1:
        precision = shrunk_precision(x - mean[labels.long()]).float()
    return LayerStats(mean.float(), var.clamp(min=0).float(), count.long(), gmean.float(), gvar.float(),
                      precision=precision)


def class_samples(spatial: torch.Tensor, labels: torch.Tensor, num_classes: int, max_per_class: int,
                  seed: int = 0) -> torch.Tensor:
    """(K, M, C): a fixed-seed sample of spatial vectors per class, M equal across classes."""
    g = torch.Generator().manual_seed(seed)
    pools = [spatial[labels == c].reshape(-1, spatial.shape[-1]).float() for c in range(num_classes)]
    m = min([max_per_class] + [len(p) for p in pools if len(p)])
    everything = spatial.reshape(-1, spatial.shape[-1]).float()
    out = []
    for p in pools:
        p = p if len(p) else everything
        out.append(p[torch.randperm(len(p), generator=g)[:m]])
    return torch.stack(out)


def compute_class_stats(bundle: Mapping[str, torch.Tensor], labels: torch.Tensor, layers: Sequence[str],
                        num_classes: int, max_spatial_per_class: int = 0, seed: int = 0) -> ClassStats:
    per_layer = {}
    for name in layers:
        s = layer_class_stats(bundle[f"layer/{name}"], labels, num_classes)
        key = f"spatial/{name}"
        if max_spatial_per_class and key in bundle:
            s.samples = class_samples(bundle[key], labels, num_classes, max_spatial_per_class, seed)
        per_layer[name] = s
    return ClassStats(list(layers), per_layer)


def compare_stats(synthetic: ClassStats, real: ClassStats) -> dict[str, dict[str, float]]:
    """Per layer: mean cosine similarity and mean relative L2 distance of class means (synthetic vs real)."""
    out = {}
    for name in synthetic.layers:
        a, b = synthetic[name].mean.double(), real[name].mean.double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        rel = torch.linalg.vector_norm(a - b, dim=1) / torch.linalg.vector_norm(b, dim=1).clamp(min=1e-12)
        out[name] = {"cosine": float(cos.mean()), "relative_l2": float(rel.mean())}
    return out
