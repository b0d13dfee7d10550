"""The one way an image is brought to the model's input size (`resize` modes of data and OOD sets).

`resize_or_crop` is used for decoded files and, image by image, for in-memory arrays (CIFAR into a
larger model), so both get the same pixels. `resize` is PIL's bilinear resize; `center_crop` floors an
odd margin; `random_crop` draws its offset from a per-image generator (files: set seed and file name;
arrays: set seed and index), so crops do not change with the number of workers, the batch size or
which other files exist. `resize_center_crop` is the standard ImageNet evaluation transform, built on
torchvision's: shorter side to size / 0.875 (256 for 224), then a size x size center crop.
`short_side_center_crop` is OpenOOD v1.5's CIFAR test transform (`Resize(32)`, `CenterCrop(32)`, bilinear:
`openood/evaluation_api/preprocessor.py`): shorter side to size, then the center crop.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
from PIL import Image

from c2ir.errors import C2IRError
from c2ir.schema import RESIZE_MODES

IMAGENET_CROP_RATIO = 0.875  # 224 / 256: the resize-then-crop ratio of the ImageNet evaluation transform


@lru_cache(maxsize=8)
def _resize_crop(shorter: int, size: int):
    """torchvision's Resize(shorter) (bilinear, aspect kept) then CenterCrop(size)."""
    # imported here: importing torchvision costs seconds per process (it loads torch._dynamo), and only the
    # resize-then-crop modes need it
    import torchvision.transforms as T

    return T.Compose([T.Resize(shorter, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size)])


def check_mode(mode: str) -> str:
    """Fail early (before any decoding) on a resize mode that does not exist."""
    if mode not in RESIZE_MODES:
        raise C2IRError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    return mode


def resize_or_crop(img: Image.Image, size: int, mode: str, rng: np.random.Generator | None) -> Image.Image:
    """Bring an image to size x size: `resize`, `center_crop`, `random_crop` (from `rng`), `resize_center_crop`
    or `short_side_center_crop`; a crop of an image smaller than `size` resizes it instead."""
    check_mode(mode)
    if mode == "resize_center_crop":
        return _resize_crop(round(size / IMAGENET_CROP_RATIO), int(size))(img)
    if mode == "short_side_center_crop":
        return _resize_crop(int(size), int(size))(img)
    w, h = img.size
    if mode == "resize" or w < size or h < size:
        return img if (w, h) == (size, size) else img.resize((size, size), Image.BILINEAR)
    if mode == "center_crop":
        left, top = (w - size) // 2, (h - size) // 2
    else:
        if rng is None:
            raise ValueError("random_crop needs the image's generator")
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return img.crop((left, top, left + size, top + size))


def file_rng(seed: int, path_name: str) -> np.random.Generator:
    """Per-file generator: an image's random crop depends only on the set's seed and its file name."""
    return np.random.default_rng([int(seed), zlib.crc32(path_name.encode())])


def index_rng(seed: int, index: int) -> np.random.Generator:
    """Per-image generator of an in-memory array: image i's crop depends on (set seed, i) only."""
    return np.random.default_rng([int(seed), int(index)])


def fit_chw(image: np.ndarray, size: int, mode: str, rng: np.random.Generator | None) -> np.ndarray:
    """One uint8 (C, H, W) array image (C = 1 or 3) through `resize_or_crop`, as a contiguous (C, size, size)."""
    c, h, w = image.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(image)
    pil = Image.fromarray(image[0] if c == 1 else np.ascontiguousarray(image.transpose(1, 2, 0)))
    arr = np.asarray(resize_or_crop(pil, size, mode, rng), dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
