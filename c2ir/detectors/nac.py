"""NAC-UE: neuron activation coverage (Liu, Tian, Li, Ma & Wang, "Neuron Activation Coverage:
Rethinking Out-of-distribution Detection and Generalization", ICLR 2024, arXiv 2306.02879; the
authors' code github.com/BierOne/ood_coverage, `openood/postprocessors/nac/`, and its CIFAR-10
configuration `configs/postprocessors/nac/resnet/nac_cifar10.yml` were read for the formula and
settings only).

Neuron state. For a layer's output z (here the penultimate feature, the input of the head) the state
of neuron i mixes its output with its influence on the decision, the gradient of the KL divergence
between the uniform distribution u and the softmax p = softmax(W z + b):

    z^_i = sigmoid(alpha * z_i * dKL(u || p)/dz_i)         in (0, 1)

For the head's input the gradient has a closed form, dKL/dz = W^T (p - u) (KL(u || p) =
-1/K sum_k log p_k - log K, whose gradient in the logits is p - u), so the states come from the
cached logits and features with no backward pass (the unit test checks it against autograd).

Coverage. On the fit set the distribution of each neuron's state is a histogram over fixed
intervals of [0, 1]; with kappa_i(b) the number of fit samples whose state falls in interval b,
the coverage of that interval is

    Phi_i(b) = min(kappa_i(b) / O*, 1)                      (O*: the count that covers an interval fully)

and the score of an input is the mean coverage of the intervals its states fall in,

    NAC(x) = 1/N sum_i Phi_i(b_i(x))                        (higher = more ID; score = -NAC)

Settings. The authors' code uses M thresholds spaced logarithmically towards 0 and 1 (dense where
sigmoid states pile up; `spacing: log`, default) and builds the coverage from 1,000 class-balanced
training images (`fit_samples`). For its penultimate layer (`avgpool` of their ResNet-18, the default
`layer_names` of that code) the CIFAR-10 configuration is O* = 50, M = 50, alpha = 100, the defaults
here. Those values come from the authors' search on OpenOOD's validation split (which holds OOD
images), not from this project. The paper's best CIFAR-10 numbers also average the coverage of
ResNet-18's layer1-3, which needs gradients at intermediate layers (a backward pass over the fit and
test images); this detector implements the penultimate layer only.

Fit data: the ID training features (`nac`, full access, the paper's setting) or the impressions
(`nac_imp`, data-free). O* is a count for a fit set of `fit_samples` images; a smaller fit set
(e.g. 100 impressions) scales it in proportion (O* n / fit_samples), so an interval needs the same
share of the fit set to be covered (this project's choice: the paper always fits on 1,000 images).
"""

from __future__ import annotations

import math

import torch

from c2ir.detectors.base import AttributeState, Detector, FitData
from c2ir.detectors.registry import register_detector
from c2ir.detectors.head import head_params
from c2ir.errors import C2IRError
from c2ir.extraction import batches

SPACINGS = ("log", "uniform")


def kl_gradient(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, D) d KL(u || softmax(W z + b)) / dz = W^T (p - u), float64 (pure)."""
    z, weight = z.double(), weight.double()
    p = torch.softmax(z @ weight.T + bias.double(), dim=1)
    return (p - 1.0 / p.shape[1]) @ weight


def neuron_states(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: float) -> torch.Tensor:
    """(N, D) sigmoid(alpha * z * dKL/dz) (pure)."""
    return torch.sigmoid(alpha * z.double() * kl_gradient(z, weight, bias))


def interval_edges(thresholds: int, spacing: str = "log") -> torch.Tensor:
    """Edges of the state intervals on [0, 1] from `thresholds` (M) thresholds.

    `uniform`: M equally spaced edges (M - 1 intervals). `log` (the authors' code): M // 2 points
    log_1000(t), t evenly spaced on [1, sqrt(1000)], give the lower half [0, 1/2]; mirrored, the upper
    half [1/2, 1] (2 (M // 2) - 1 edges), so the intervals are finest next to 0 and 1."""
    if spacing == "uniform":
        return torch.linspace(0.0, 1.0, thresholds, dtype=torch.float64)
    half = thresholds // 2
    lower = torch.log(torch.linspace(1.0, math.sqrt(1000.0), half, dtype=torch.float64)) / math.log(1000.0)
    return torch.cat([lower[:-1], (1.0 - lower).flip(0)])


def interval_index(states: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Index of the interval [e_b, e_b+1) each state falls in; the last interval is closed at 1."""
    return torch.bucketize(states, edges[1:-1].to(states.dtype), right=True)


def coverage(states: torch.Tensor, edges: torch.Tensor, o_star: float) -> torch.Tensor:
    """(B, N) min(count of fit states per interval and neuron / O*, 1), B = number of intervals (pure)."""
    idx = interval_index(states, edges)                                  # (n, N)
    counts = torch.zeros(len(edges) - 1, states.shape[1], dtype=torch.float64)
    counts.scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    return (counts / o_star).clamp(max=1.0)


def nac_score(states: torch.Tensor, cover: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """-(mean over neurons of the coverage of the interval each state falls in) (pure)."""
    idx = interval_index(states, edges)                                  # (n, N)
    return -cover.gather(0, idx).mean(dim=1)


def balanced_subset(labels: torch.Tensor | None, n: int, total: int, seed: int = 0) -> torch.Tensor:
    """Indices of about `total` of `n` rows: total // K per class (all of a smaller class), or any
    `total` rows without labels; fixed seed."""
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        return torch.randperm(n, generator=g)[:total].sort().values
    classes = labels.unique()
    per_class = max(1, total // len(classes))
    picks = []
    for c in classes:
        rows = (labels == c).nonzero().flatten()
        picks.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


@register_detector("nac")
class NAC(AttributeState, Detector):
    """Negative mean neuron-activation coverage of the penultimate states.

    Args:
        fit_on: `id_train` (full access, the paper's setting) or `impressions` (data-free).
        alpha: sigmoid steepness of the neuron state (CIFAR-10, penultimate layer: 100).
        thresholds: M, the number of interval thresholds on [0, 1] (CIFAR-10: 50).
        o_star: O*, the count covering an interval fully, for a fit set of `fit_samples` (CIFAR-10: 50).
        fit_samples: class-balanced fit samples used (the paper's 1,000); null: all, and O* unscaled.
        spacing: `log` (the authors' intervals, finest next to 0 and 1) or `uniform`.
    """

    state_attrs = ('weight', 'bias', 'edges', 'cover')
    requires_fit = True
    limits = {"thresholds": ">= 4", "o_star": "> 0", "fit_samples": ">= 1"}  # checked by build_detector

    def __init__(self, name: str = "nac", *, fit_on: str = "id_train", alpha: float = 100.0, thresholds: int = 50,
                 o_star: float = 50.0, fit_samples: int | None = 1000, spacing: str = "log") -> None:
        super().__init__(name, fit_on=fit_on)
        if spacing not in SPACINGS:
            raise C2IRError(f"detector {name}: spacing={spacing!r}; choose one of {', '.join(SPACINGS)}")
        self.alpha, self.thresholds, self.o_star = float(alpha), int(thresholds), float(o_star)
        self.fit_samples = None if fit_samples is None else int(fit_samples)
        self.spacing = spacing

    def _fit(self, data: FitData) -> None:
        self.weight, self.bias = head_params(data, self.name)
        bundle = self.source(data)
        z = bundle["penultimate"]
        o_star = self.o_star
        if self.fit_samples is not None:
            if len(z) > self.fit_samples:
                labels = bundle["labels"].long() if "labels" in bundle else None
                z = z[balanced_subset(labels, len(z), self.fit_samples)]
            o_star = self.o_star * min(len(z), self.fit_samples) / self.fit_samples
        self.edges = interval_edges(self.thresholds, self.spacing)
        self.cover = coverage(neuron_states(z, self.weight, self.bias, self.alpha), self.edges, o_star)

    def _score(self, feats):
        z = feats["penultimate"]
        return torch.cat([nac_score(neuron_states(z[s], self.weight, self.bias, self.alpha), self.cover, self.edges)
                          for s in batches(len(z), 4096)])
