"""WeiPer+KLD: weight perturbations of the class projections, scored by KL divergences of activation
histograms (Granz, Heurich & Landgraf, "WeiPer: OOD Detection using Weight Perturbations of Class
Projections", NeurIPS 2024, arXiv 2405.17164; the authors' OpenOOD integration
(github.com/mgranz/weiper_icml, `openood/postprocessors/weiper_kldiv_postprocessor.py` and
`weiper_kldiv/utils.py`, read in a public copy) and the hyper-parameter table of its README were
read for the formula and settings only).

Perturbed head. Each class projection w_k (row of the head W) is perturbed r times along random
directions of fixed relative length delta:

    w~_{k,j} = w_k + delta * ||w_k|| * e_{k,j} / ||e_{k,j}||,   e_{k,j} ~ N(0, I),  j = 1..r

giving r*K perturbed logits z~(x) = W~ h + b (biases repeated) for the penultimate feature h.

Densities. Each input's D penultimate values are read as samples of one distribution: a histogram
with `bins` equal intervals on the fit set's range [min - g, max + g] (g = (max - min) / n_fit)
divided by D gives p_h(x); its r*K perturbed logits give p_z(x) the same way (values outside the
range drop out). The fit set's mean histograms are P_h and P_z.

Score. With s(.) a moving average of width s1 (or s2) over the intervals, applied to the input's
histogram, and KLsym(P, Q) = KL(P || Q) + KL(Q || P) after adding eps and renormalising,

    S(x) = KLsym(P_h, s1(p_h(x))) + lambda1 * KLsym(P_z, s2(p_z(x))) - lambda2 * MSP~(x)

with MSP~(x) the maximum softmax probability of each perturbed head averaged over the r heads
(higher S = more OOD; the authors' confidence is -S).

Settings: the authors' README table for CIFAR-10 (ResNet-18): r = 100, delta = 1.8, 100 bins,
lambda1 = 2.5, lambda2 = 0.1, s1 = 4, s2 = 15; eps = 0.01 (h) and 0.025 (z~) are their code's
defaults. Those values came from the authors' search on OpenOOD's validation split (which holds
OOD images), not from this project. The perturbation directions are drawn with a fixed
`perturbation_seed`.
Fit data: the ID training features (`weiper`, full access, the paper's setting) or the impressions
(`weiper_imp`, data-free).
"""

from __future__ import annotations

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.head import head_params
from c2ir.extraction import batches


def perturbed_head(weight: torch.Tensor, delta: float, repeats: int, seed: int = 0) -> torch.Tensor:
    """(repeats * K, D) rows w_k + delta ||w_k|| e / ||e|| (repeat j occupies rows j*K .. j*K+K-1)."""
    weight = weight.double()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(repeats, *weight.shape, generator=g, dtype=torch.float64)
    noise = noise / noise.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return (weight[None] + delta * weight.norm(dim=1)[None, :, None] * noise).reshape(-1, weight.shape[1])


def padded_range(lo: float, hi: float, rows: int) -> tuple[float, float]:
    """[min - g, max + g] of the fit set's values, g = (max - min) / rows (the authors' padding)."""
    gap = (hi - lo) / rows
    return lo - gap, hi + gap


def row_histograms(x: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """(N, bins): share of each row's values in each of `bins` equal intervals of [lo, hi] (pure);
    values outside the range count in the row's total but in no interval."""
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    idx = torch.bucketize(x.double(), edges, right=True) - 1            # -1 below, `bins` above the range
    idx = idx.clamp(-1, bins) + 1                                        # 0 and bins + 1: outside
    counts = torch.zeros(len(x), bins + 2, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts[:, 1:-1] / x.shape[1]


def smooth(p: torch.Tensor, width: int) -> torch.Tensor:
    """Moving average of width `width` along the last axis, edges replicated ('same' output size:
    (width - 1) // 2 values padded before, the rest after) (pure)."""
    if width <= 1:
        return p
    before = (width - 1) // 2
    padded = torch.nn.functional.pad(p[:, None], (before, width - 1 - before), mode="replicate")
    return torch.nn.functional.avg_pool1d(padded, width, stride=1)[:, 0]


def symmetric_kl(reference: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """(N,) KL(P || Q) + KL(Q || P), P = reference + eps and Q = q + eps, each renormalised (pure)."""
    p = reference.double() + eps
    p = p / p.sum()
    q = q.double() + eps
    q = q / q.sum(dim=1, keepdim=True)
    log_ratio = p.log()[None] - q.log()
    return (p[None] * log_ratio).sum(dim=1) - (q * log_ratio).sum(dim=1)


def mean_msp(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """(N,) max softmax probability of each block of `classes` logits, averaged over the blocks."""
    return torch.softmax(logits.reshape(len(logits), -1, classes), dim=2).max(dim=2).values.mean(dim=1)


@register_detector("weiper")
class WeiPer(AttributeState, Detector):
    """WeiPer+KLD: KL divergences of the activation and perturbed-logit histograms to the fit set's, minus
    the perturbed heads' mean MSP.

    Args:
        fit_on: `id_train` (full access, the paper's setting) or `impressions` (data-free).
        repeats: r, perturbations per class projection.  delta: their relative length.
        bins: histogram intervals.  lambda1, lambda2: weights of the perturbed-logit KL and of the MSP.
        smoothing, smoothing_perturbed: moving-average widths s1 (activations) and s2 (perturbed logits).
        eps, eps_perturbed: added to the densities before the KL divergences.
        perturbation_seed: seed of the random directions.
    """

    state_attrs = ('perturbed_weight', 'perturbed_bias', 'h_range', 'z_range', 'h_mean', 'z_mean')
    requires_fit = True
    # checked by build_detector; eps and eps_perturbed > 0 keep the KL divergences finite
    limits = {"repeats": ">= 1", "bins": ">= 2", "smoothing": ">= 1", "smoothing_perturbed": ">= 1",
              "eps": "> 0", "eps_perturbed": "> 0"}

    def __init__(self, name: str = "weiper", *, fit_on: str = "id_train", repeats: int = 100, delta: float = 1.8,
                 bins: int = 100, lambda1: float = 2.5, lambda2: float = 0.1, smoothing: int = 4,
                 smoothing_perturbed: int = 15, eps: float = 0.01, eps_perturbed: float = 0.025,
                 perturbation_seed: int = 0) -> None:
        super().__init__(name, fit_on=fit_on)
        self.repeats, self.delta, self.bins = int(repeats), float(delta), int(bins)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.smoothing, self.smoothing_perturbed = int(smoothing), int(smoothing_perturbed)
        self.eps, self.eps_perturbed, self.perturbation_seed = float(eps), float(eps_perturbed), int(perturbation_seed)

    def _fit(self, data: FitData) -> None:
        weight, bias = head_params(data, self.name)
        self.perturbed_weight = perturbed_head(weight, self.delta, self.repeats, self.perturbation_seed)
        self.perturbed_bias = bias.double().repeat(self.repeats)
        h = self.source(data)["penultimate"].double()
        spans = list(batches(len(h), 512))   # the perturbed logits are r*K per row: never all at once
        extremes = [(float(z.min()), float(z.max())) for z in (self._perturbed_logits(h[s]) for s in spans)]
        z_lo, z_hi = min(lo for lo, _ in extremes), max(hi for _, hi in extremes)
        self.h_range = torch.tensor(padded_range(float(h.min()), float(h.max()), len(h)), dtype=torch.float64)
        self.z_range = torch.tensor(padded_range(z_lo, z_hi, len(h)), dtype=torch.float64)
        self.h_mean = row_histograms(h, *self.h_range.tolist(), self.bins).mean(dim=0)
        self.z_mean = sum(row_histograms(self._perturbed_logits(h[s]), *self.z_range.tolist(), self.bins).sum(dim=0)
                          for s in spans) / len(h)

    def _perturbed_logits(self, h: torch.Tensor) -> torch.Tensor:
        return h.double() @ self.perturbed_weight.T + self.perturbed_bias

    def _score(self, feats):
        h_all = feats["penultimate"]
        classes = len(self.perturbed_bias) // self.repeats
        out = []
        for span in batches(len(h_all), 512):
            h = h_all[span].double()
            z = self._perturbed_logits(h)
            kl_h = symmetric_kl(self.h_mean, smooth(row_histograms(h, *self.h_range.tolist(), self.bins), self.smoothing),
                                self.eps)
            kl_z = symmetric_kl(self.z_mean, smooth(row_histograms(z, *self.z_range.tolist(), self.bins),
                                                    self.smoothing_perturbed), self.eps_perturbed)
            out.append(kl_h + self.lambda1 * kl_z - self.lambda2 * mean_msp(z, classes))
        return torch.cat(out)
