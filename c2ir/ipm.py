"""Integral Probability Metric deviations of an input's features from its predicted class.

Pure tensor functions: (features of a batch at one layer, that layer's class
statistics, predicted classes) -> (B,) non-negative deviations. Zero when the input's
features equal the class statistics they are compared with.

- `mean_l2`: linear-kernel MMD, i.e. ||m(x) - mu_c||_2 between the input's channel-mean
  vector and the class mean.
- `mean_l1`: ||m(x) - mu_c||_1 / C.
- `mean_standardized`: RMS over channels of (m(x) - mu_c) / sigma_c, sigma_c from the
  class's impression spread.
- `mahalanobis`: sqrt((m(x) - mu_c)^T P (m(x) - mu_c) / C), P the Ledoit-Wolf-shrunk inverse of the
  impressions' within-class covariance shared by all classes (Lee et al., NeurIPS 2018, per layer);
  with a diagonal P = diag(1 / sigma^2) it is `mean_standardized` with a variance shared by the classes.
- `mmd_rbf`: Gaussian-kernel MMD between the input's spatial feature vectors and the
  class's impression feature vectors, bandwidth by the median heuristic.
- `wasserstein`: per-channel 1-D Wasserstein-1 between the input's spatial activations
  and the class's, averaged over channels (`variant=sliced`: random 1-D projections).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from c2ir.errors import C2IRError
from c2ir.stats import MAX_PRECISION_CHANNELS, LayerStats


def mean_l2(x: torch.Tensor, class_means: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x - class_means[pred], dim=1)


def mean_l1(x: torch.Tensor, class_means: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return (x - class_means[pred]).abs().mean(dim=1)


def mean_standardized(x: torch.Tensor, class_means: torch.Tensor, class_vars: torch.Tensor,
                      pred: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    z = (x - class_means[pred]) / torch.sqrt(class_vars[pred] + eps)
    return torch.sqrt((z**2).mean(dim=1))


def mahalanobis(x: torch.Tensor, class_means: torch.Tensor, precision: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """sqrt(d^T P d / C) with d = x - class_means[pred]: (B, C), (K, C), (C, C), (B,) -> (B,)."""
    d = x.double() - class_means.double()[pred]
    return torch.sqrt((d @ precision.double() * d).sum(dim=1).clamp(min=0) / x.shape[1])


def _precision(stats: LayerStats) -> torch.Tensor:
    if stats.precision is None:
        raise C2IRError(f"ipm=mahalanobis needs the impressions' within-class precision, which is computed for layers "
                        f"of at most {MAX_PRECISION_CHANNELS} channels (this one has {stats.mean.shape[1]}); "
                        "choose another ipm= or fewer channels (layer_set=)")
    return stats.precision


def rbf_kernel_mean(a: torch.Tensor, b: torch.Tensor, bandwidth: torch.Tensor) -> torch.Tensor:
    """Mean of exp(-||a_i - b_j||^2 / (2 h^2)) over i, j, batched: a (B, P, C), b (B, M, C) -> (B,)."""
    d2 = torch.cdist(a, b).pow(2)
    return torch.exp(-d2 / (2 * bandwidth.view(-1, 1, 1) ** 2)).mean(dim=(1, 2))


def median_bandwidth(samples: torch.Tensor, max_points: int = 2048, seed: int = 0) -> torch.Tensor:
    """Median pairwise distance of (up to max_points of) the rows of `samples` (N, C)."""
    g = torch.Generator().manual_seed(seed)
    pts = samples.reshape(-1, samples.shape[-1]).float()
    pts = pts[torch.randperm(len(pts), generator=g)[:max_points]]
    d = torch.cdist(pts, pts)
    off = d[~torch.eye(len(pts), dtype=torch.bool)]
    med = off.median() if off.numel() else torch.tensor(1.0)
    return med.clamp(min=1e-6)


def mmd_rbf(xs: torch.Tensor, class_samples: torch.Tensor, pred: torch.Tensor, bandwidth: torch.Tensor,
            kyy: torch.Tensor | None = None) -> torch.Tensor:
    """Biased MMD (square root of MMD^2) between xs (B, P, C) and class_samples[pred] (B, M, C)."""
    ys = class_samples[pred].float()
    xs = xs.float()
    h = bandwidth.expand(len(xs)) if bandwidth.dim() == 0 else bandwidth[pred]
    kxx = rbf_kernel_mean(xs, xs, h)
    kxy = rbf_kernel_mean(xs, ys, h)
    kyy_b = kyy[pred] if kyy is not None else rbf_kernel_mean(ys, ys, h)
    return torch.sqrt((kxx + kyy_b - 2 * kxy).clamp(min=0))


def _quantiles(sorted_vals: torch.Tensor, n: int) -> torch.Tensor:
    """Values of sorted (..., M, C) at the n mid-point quantile levels (i + 0.5) / n."""
    m = sorted_vals.shape[-2]
    idx = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * m).floor().long().clamp(max=m - 1)
    return sorted_vals.index_select(-2, idx.to(sorted_vals.device))


def wasserstein_channels(xs: torch.Tensor, class_samples: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean over channels of 1-D W1 between xs (B, P, C) and class_samples[pred] (B, M, C)."""
    xs_sorted = xs.float().sort(dim=1).values
    ys_sorted = class_samples.float().sort(dim=1).values[pred]
    yq = _quantiles(ys_sorted, xs.shape[1])
    return (xs_sorted - yq).abs().mean(dim=(1, 2))


def sliced_wasserstein(xs: torch.Tensor, class_samples: torch.Tensor, pred: torch.Tensor,
                       projections: torch.Tensor) -> torch.Tensor:
    """W1 averaged over random unit directions (C, R): project, then compare 1-D distributions."""
    return wasserstein_channels(xs.float() @ projections, class_samples.float() @ projections, pred)


def _no_constants(stats: LayerStats, seed: int, projections: int) -> dict[str, torch.Tensor]:
    return {}


def _mmd_constants(stats: LayerStats, seed: int, projections: int) -> dict[str, torch.Tensor]:
    h = median_bandwidth(stats.samples, seed=seed)
    kyy = rbf_kernel_mean(stats.samples.float(), stats.samples.float(), h.expand(len(stats.samples)))
    return {"bandwidth": h, "kyy": kyy}


def _projection_constants(stats: LayerStats, seed: int, projections: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(stats.samples.shape[-1], projections, generator=g)
    return {"projections": p / torch.linalg.vector_norm(p, dim=0, keepdim=True)}


Deviation = Callable[[torch.Tensor, "torch.Tensor | None", LayerStats, torch.Tensor, dict], torch.Tensor]


@dataclass(frozen=True)
class IPM:
    """A named deviation: `fn(pooled, spatial, stats, pred, constants) -> (B,)`, and `constants`,
    which computes once per layer what `fn` needs from the statistics (bandwidths, projections).

    A new IPM = one pure function above + one entry in IPMS + one YAML in configs/ipm/.
    """

    name: str
    needs_spatial: bool
    fn: Deviation
    constants: Callable[[LayerStats, int, int], dict[str, torch.Tensor]] = _no_constants

    def prepare(self, stats: LayerStats, seed: int = 0, projections: int = 64) -> dict[str, torch.Tensor]:
        if self.needs_spatial and stats.samples is None:
            raise C2IRError(f"ipm={self.name} needs spatial class samples; set features.spatial_grid > 0")
        return self.constants(stats, seed, projections)

    def __call__(self, pooled: torch.Tensor, spatial: torch.Tensor | None, stats: LayerStats,
                 pred: torch.Tensor, extra: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.needs_spatial and spatial is None:
            raise C2IRError(f"ipm={self.name} needs spatial features; set features.spatial_grid > 0")
        return self.fn(pooled, spatial, stats, pred, extra)


IPMS: dict[str, IPM] = {ipm.name: ipm for ipm in (
    IPM("mean_l2", False, lambda x, _s, st, pred, _c: mean_l2(x, st.mean, pred)),
    IPM("mean_l1", False, lambda x, _s, st, pred, _c: mean_l1(x, st.mean, pred)),
    IPM("mean_standardized", False, lambda x, _s, st, pred, _c: mean_standardized(x, st.mean, st.var, pred)),
    IPM("mahalanobis", False, lambda x, _s, st, pred, _c: mahalanobis(x, st.mean, _precision(st), pred)),
    IPM("mmd_rbf", True, lambda _x, s, st, pred, c: mmd_rbf(s, st.samples, pred, c["bandwidth"], c["kyy"]),
        _mmd_constants),
    IPM("wasserstein", True, lambda _x, s, st, pred, _c: wasserstein_channels(s, st.samples, pred)),
    IPM("sliced_wasserstein", True, lambda _x, s, st, pred, c: sliced_wasserstein(s, st.samples, pred, c["projections"]),
        _projection_constants),
)}


def get_ipm(name: str) -> IPM:
    if name not in IPMS:
        raise C2IRError(f"unknown ipm {name!r}; choose one of {sorted(IPMS)}")
    return IPMS[name]
