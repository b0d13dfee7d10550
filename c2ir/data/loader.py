"""Batches of a dataset in order, through a DataLoader with worker processes for streamed sets.

`BatchStream` is what a forward pass iterates: uint8 image batches (and labels) in the dataset's
order, with unreadable files dropped and counted. Tensor-backed `ImageSet`s are sliced directly
(no worker processes: their images are already in memory); `StreamedSet`s are decoded by
`num_workers` processes, `prefetch_factor` batches ahead, so at most a few batches of decoded
pixels exist at any time whatever the size of the set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from c2ir.data.imageset import NO_LABEL, AnyImageSet, ImageSet, StreamedSet
from c2ir.errors import C2IRError

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """Decoding processes when `num_workers` is not set: one per CPU this process may use (at most 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


@dataclass
class Batch:
    images: torch.Tensor              # uint8 (B, C, H, W), B may be 0 when every file of the batch was unreadable
    labels: torch.Tensor | None       # (B,) int64 for labelled sets
    skipped: int = 0


def _collate(items: list[tuple[torch.Tensor | None, int]], shape: tuple[int, int, int], labelled: bool) -> Batch:
    """Stack the readable items of one batch (runs in the worker)."""
    kept = [(x, y) for x, y in items if x is not None]
    # numpy's stack keeps the items' memory layout (decoded files: channels-last), as the former
    # whole-set decoding did; the model's float rounding depends on that layout
    images = torch.from_numpy(np.stack([x.numpy() for x, _ in kept])) if kept \
        else torch.empty((0, *shape), dtype=torch.uint8)
    labels = torch.tensor([y for _, y in kept], dtype=torch.long) if labelled else None
    return Batch(images, labels, len(items) - len(kept))


class _Collate:
    """Picklable collate function (worker processes receive it)."""

    def __init__(self, shape: tuple[int, int, int], labelled: bool):
        self.shape, self.labelled = shape, labelled

    def __call__(self, items: list) -> Batch:
        return _collate(items, self.shape, self.labelled)


def batch_spans(n: int, batch_size: int) -> list[range]:
    return [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


class BatchStream:
    """Iterable of `Batch`es over `data` in order; after a full pass, `skipped` and `counts` are known.

    `batches` selects which of the dataset's consecutive batches to produce (a distributed rank's
    share); `counts` holds the number of readable images of each produced batch, in order.
    """

    def __init__(self, data: AnyImageSet, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                 batches: Sequence[int] | None = None, desc: str | None = None):
        self.data, self.batch_size = data, int(batch_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        spans = batch_spans(len(data), self.batch_size)
        self.spans = spans if batches is None else [spans[b] for b in batches]
        self.desc = desc or data.name
        self.skipped = 0
        self.counts: list[int] = []

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[Batch]:
        self.skipped, self.counts = 0, []
        for batch in self._batches():
            self.skipped += batch.skipped
            self.counts.append(len(batch.images))
            yield batch
        total = sum(self.counts)
        if self.skipped and total == 0:
            raise C2IRError(f"none of the {self.skipped} images of {self.desc} could be decoded; check the files are images")
        if self.skipped:
            log.warning("%s: skipped %d unreadable image(s) of %d", self.desc, self.skipped, total + self.skipped)

    def _batches(self) -> Iterator[Batch]:
        data = self.data
        if isinstance(data, ImageSet):  # in memory already: slices, no copies, no processes
            for span in self.spans:
                sl = slice(span.start, span.stop)
                yield Batch(data.images[sl], None if data.labels is None else data.labels[sl])
            return
        if not isinstance(data, StreamedSet):
            raise TypeError(f"not an image set: {type(data).__name__}")
        workers = min(self.num_workers, len(self.spans))
        loader = DataLoader(data, batch_sampler=[list(s) for s in self.spans], num_workers=workers,
                            collate_fn=_Collate(data.shape, data.labels is not None),
                            pin_memory=self.pin_memory, prefetch_factor=2 if workers else None)
        yield from loader


def materialize(data: AnyImageSet, batch_size: int = 256, num_workers: int = 0) -> ImageSet:
    """The whole set as one in-memory ImageSet (for the few users that need every image at once:
    training, pixel shuffling). Unreadable files are dropped and counted, as in a streamed pass."""
    if isinstance(data, ImageSet):
        return data
    stream = BatchStream(data, batch_size, num_workers)
    parts = list(stream)
    images = torch.cat([b.images for b in parts]) if parts else torch.empty((0, *data.shape), dtype=torch.uint8)
    labels = None if data.labels is None else torch.cat([b.labels for b in parts])
    data.skipped = stream.skipped
    return ImageSet(data.name, images, labels, stream.skipped)


__all__ = ["Batch", "BatchStream", "NO_LABEL", "default_num_workers", "materialize"]
