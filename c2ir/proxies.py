"""Proxy outliers and pseudo-real inputs made only from impressions: no real ID or OOD image is used.

C2IR's data-free choices (its deviation measure and Energy weight) separate pseudo-real inputs
from these proxy outliers: a patch permutation (local statistics kept, layout destroyed), a heavy
blur (fine texture removed) and the pixel average of two impressions of different target classes.
The pseudo-real inputs are held-back impressions `softened` by a mild blur (sigma = image size / 32):
synthesis leaves high-frequency residue that natural images lack, and a detector that rejects an
impression once that residue is smoothed away also rejects real data (docs/BENCHMARKS.md section 17, issue 21).
The same softened held-back impressions set C2IR's data-free threshold (`c2ir.threshold`).
Pure functions of image tensors (N, C, H, W) in [0, 1].
"""

from __future__ import annotations

import torch

from c2ir.data.imageset import unit_pixels

__all__ = ["blurred", "folds", "gaussian_blur", "mixed", "patch_permuted", "proxy_images", "softened"]


def patch_permuted(x: torch.Tensor, grid: int = 4, seed: int = 0) -> torch.Tensor:
    """Shuffle a grid x grid tiling of each image (one random permutation per image)."""
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    x = x[:, :, : ph * grid, : pw * grid]
    tiles = x.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(grid * grid, generator=g) for _ in range(n)])
    tiles = tiles[torch.arange(n)[:, None], perm]
    return tiles.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ph * grid, pw * grid)


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Blur (N, C, H, W) images with a normalised size x size Gaussian (reflect padding, one depthwise
    convolution): torchvision's `gaussian_blur` to the bit (tests/test_proxies.py), without importing
    torchvision, which costs a process seconds."""
    half = (size - 1) * 0.5
    t = torch.linspace(-half, half, steps=size, dtype=x.dtype)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    k1 = pdf / pdf.sum()
    kernel = torch.mm(k1[:, None], k1[None, :]).expand(x.shape[-3], 1, size, size)
    padded = torch.nn.functional.pad(x, [size // 2] * 4, mode="reflect")
    return torch.nn.functional.conv2d(padded, kernel, groups=x.shape[-3])


def blur_sigma(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation `sigma` pixels (a kernel of about +-2 sigma)."""
    return gaussian_blur(x, 2 * int(2 * sigma + 0.5) + 1, sigma)


def blurred(x: torch.Tensor) -> torch.Tensor:
    """Proxy outlier: Gaussian blur with sigma = image size / 16 (at least 0.5 px)."""
    return blur_sigma(x, max(x.shape[-1] / 16, 0.5))


def softened(x: torch.Tensor) -> torch.Tensor:
    """Pseudo-real input: a mild Gaussian blur, sigma = image size / 32 (at least 0.25 px; 1 px at 32 x 32),
    half the proxy `blurred`'s (pixels in [0, 1] or uint8; returns [0, 1] floats)."""
    x = unit_pixels(x)
    return blur_sigma(x, max(x.shape[-1] / 32, 0.25))


def mixed(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Average each image with one of another target class (where the class draw allows it)."""
    g = torch.Generator().manual_seed(seed)
    partner = torch.randperm(len(x), generator=g)
    same = y[partner] == y
    partner[same] = torch.roll(partner, 1)[same]
    return 0.5 * (x + x[partner])


def folds(targets: torch.Tensor) -> list[torch.Tensor]:
    """Two per-class halves (alternating order within each class): indices of fold 0 and fold 1."""
    rank = torch.zeros_like(targets)
    for k in targets.unique():
        idx = (targets == k).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    return [(rank % 2 == 0).nonzero().flatten(), (rank % 2 == 1).nonzero().flatten()]


def proxy_images(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The three proxy-outlier sets of images `x` with targets `y`."""
    x = unit_pixels(x)
    return {"patch_permuted": patch_permuted(x, seed=seed), "blurred": blurred(x), "mixed": mixed(x, y, seed=seed)}
