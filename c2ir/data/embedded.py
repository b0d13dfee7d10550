"""The embedded default: data that ships inside scikit-learn, so `c2ir run` needs no download.

In-distribution: scikit-learn's 8x8 handwritten digits (1,797 images, fixed-seed split).
OOD sets, from near to far:
- `pixel_shuffled`: test digits with their pixels permuted; same intensity histogram,
  no digit structure (near OOD: only spatial structure tells them apart).
- `photo_patches`: grayscale patches of the two sample photographs scikit-learn ships,
  downscaled to 8x8 (natural-image texture, a different domain).
- `gaussian_noise`, `uniform_noise`: i.i.d. pixel noise (far OOD).
"""

from __future__ import annotations

import numpy as np
import torch

from c2ir.data.imageset import ImageSet


def digits(split: str, seed: int, test_fraction: float = 0.3) -> ImageSet:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images / 16.0 * 255.0).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    idx = idx_train if split == "train" else idx_test
    return ImageSet(f"digits-{split}", torch.from_numpy(images[idx]), torch.from_numpy(bunch.target[idx]).long())


def noise(kind: str, n: int, channels: int, size: int, seed: int) -> ImageSet:
    """Gaussian N(0.5, 0.25^2) clipped to [0, 1], or uniform U[0, 1], quantised to uint8."""
    g = torch.Generator().manual_seed(int(seed))
    shape = (n, channels, size, size)
    if kind == "gaussian":
        x = (torch.randn(shape, generator=g) * 0.25 + 0.5).clamp_(0, 1)
    elif kind == "uniform":
        x = torch.rand(shape, generator=g)
    else:
        raise ValueError(kind)
    return ImageSet(f"{kind}_noise", (x * 255).round().to(torch.uint8))


def photo_patches(n: int, channels: int, size: int, seed: int, patch: int = 24) -> ImageSet:
    """Random `patch`-pixel crops of scikit-learn's sample photographs, resized to `size`."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        top = int(rng.integers(0, img.shape[0] - patch))
        left = int(rng.integers(0, img.shape[1] - patch))
        pil = Image.fromarray(img[top:top + patch, left:left + patch])
        pil = pil.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
        arr = np.asarray(pil, dtype=np.uint8)
        out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return ImageSet("photo_patches", torch.from_numpy(np.stack(out)))


def pixel_shuffled(base: ImageSet, seed: int) -> ImageSet:
    """Each image's pixels permuted at random (per image, all channels together)."""
    g = torch.Generator().manual_seed(int(seed))
    n, c, h, w = base.images.shape
    flat = base.images.reshape(n, c, h * w)
    perms = torch.stack([torch.randperm(h * w, generator=g) for _ in range(n)])
    shuffled = torch.gather(flat, 2, perms[:, None, :].expand(n, c, h * w))
    return ImageSet("pixel_shuffled", shuffled.reshape(n, c, h, w).contiguous())
