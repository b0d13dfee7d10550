"""Image datasets as `torch.utils.data.Dataset`s of uint8 (C, H, W) images at the model's input size.

Two kinds share one interface (`name`, `labels`, `skipped`, `__len__`, `__getitem__`):
- `ImageSet`: small sets held as one uint8 tensor (the embedded digits, generated noise, impressions);
- `StreamedSet` subclasses (files, arrays of another size): each item is decoded and brought to size
  on demand, in DataLoader worker processes (`c2ir.data.loader`), so memory does not grow with the set.
An item is `(image, label)`; a file that cannot be decoded gives `(None, label)` and is skipped (and
counted) by the loader, so the order of the remaining samples is the listing order, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

NO_LABEL = -1  # label of an item of an unlabelled set (the loader returns labels=None for such sets)


@dataclass
class ImageSet(Dataset):
    """Images as uint8 (N, C, H, W) in [0, 255]; labels (N,) int64 for labelled sets, else None."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    skipped: int = 0  # unreadable files skipped while decoding

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], NO_LABEL if self.labels is None else int(self.labels[i])

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.name, self.images[index], labels, self.skipped)


class StreamedSet(Dataset):
    """A dataset whose images are produced per item (decoded, resized) rather than held in memory.

    `labels` are the labels of every listed item (known before decoding); `skipped` is filled in by
    the loader once a full pass has seen which files could not be decoded.
    """

    name: str
    labels: torch.Tensor | None
    skipped: int
    shape: tuple[int, int, int]  # (C, H, W) of every image

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, i: int) -> torch.Tensor | None:
        """Item `i` as uint8 (C, H, W), or None when it cannot be decoded."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        return self.image(i), NO_LABEL if self.labels is None else int(self.labels[i])


AnyImageSet = ImageSet | StreamedSet


def unit_pixels(x: torch.Tensor) -> torch.Tensor:
    """Pixels as float in [0, 1]: uint8 images divided by 255, float images as float32 (the one conversion)."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


class Normalizer:
    """Maps pixels (uint8 or float in [0, 1]) to the model's normalised input space, and back."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = unit_pixels(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def to_pixels(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z.device) + self.mean.to(z.device)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowest and highest normalised value per channel (pixel 0 and pixel 1)."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std


def subsample(n: int, max_samples: int | None, seed: int) -> torch.Tensor | None:
    """Fixed-seed choice of `max_samples` indices (sorted), or None to keep all."""
    if max_samples is None or max_samples <= 0 or max_samples >= n:
        return None
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[: int(max_samples)].sort().values
