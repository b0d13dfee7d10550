"""How a decoded PIL image is brought to the model's input size (`resize` modes of data and OOD sets).

`resize` and `resize_center_crop` are torchvision transforms (`Resize` on a PIL image is PIL's
bilinear resize, the pixels c2ir has always produced). `resize_center_crop` is the standard ImageNet
evaluation transform: shorter side to size / 0.875 (256 for 224), then a size x size center crop.
`center_crop` and `random_crop` keep c2ir's own offsets: torchvision's `CenterCrop` rounds an odd
margin up (c2ir floors it) and `RandomCrop` draws from the global RNG, which depends on the worker a
file lands in; c2ir seeds each file's crop by (set seed, file name), so crops do not change with
the number of workers, the batch size or which other files exist.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torchvision.transforms as T
from PIL import Image

from c2ir.errors import C2IRError
from c2ir.schema import RESIZE_MODES

IMAGENET_CROP_RATIO = 0.875  # 224 / 256: the resize-then-crop ratio of the ImageNet evaluation transform


class SeededCrop:
    """A size x size crop (centered, or at a per-image seeded offset); smaller images are resized."""

    def __init__(self, size: int, random: bool):
        self.size, self.random = int(size), random

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        size, (w, h) = self.size, img.size
        if w < size or h < size:
            return img if (w, h) == (size, size) else img.resize((size, size), Image.BILINEAR)
        if self.random:
            if rng is None:
                raise ValueError("random_crop needs the image's generator")
            left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        else:
            left, top = (w - size) // 2, (h - size) // 2
        return img.crop((left, top, left + size, top + size))


def build_transform(size: int, mode: str) -> Callable[..., Image.Image]:
    """The PIL -> PIL transform of a resize mode (called as `t(img)` or, for crops, `t(img, rng)`)."""
    if mode == "resize":
        return T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR)
    if mode == "resize_center_crop":
        return T.Compose([T.Resize(round(size / IMAGENET_CROP_RATIO), interpolation=T.InterpolationMode.BILINEAR),
                          T.CenterCrop(size)])
    if mode in ("center_crop", "random_crop"):
        return SeededCrop(size, random=mode == "random_crop")
    raise C2IRError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")


def file_rng(seed: int, path_name: str) -> np.random.Generator:
    """Per-file generator: an image's random crop depends only on the set's seed and its file name."""
    return np.random.default_rng([int(seed), zlib.crc32(path_name.encode())])


def apply(transform: Callable[..., Image.Image], img: Image.Image, seed: int, path_name: str) -> Image.Image:
    if isinstance(transform, SeededCrop):
        return transform(img, file_rng(seed, path_name) if transform.random else None)
    return transform(img)
