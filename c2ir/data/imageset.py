"""A decoded dataset held as one uint8 tensor: decoding happens once, every pass after is a slice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) in [0, 255]; labels (N,) int64 for labelled sets, else None."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    skipped: int = 0  # unreadable files skipped while decoding

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.name, self.images[index], labels, self.skipped)


class Normalizer:
    """Maps pixels (uint8 or float in [0, 1]) to the model's normalised input space, and back."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
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
