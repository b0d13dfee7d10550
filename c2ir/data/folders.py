"""Image folders as streamed datasets: `<root>/<class>/*` (labelled) or any tree of images (OOD).

Listing, fixed-seed subsetting and label assignment happen here, once; decoding happens per item
(`FileSet.image`) in the DataLoader's worker processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from c2ir.data.digests import DigestCache, tree_digest
from c2ir.data.imageset import StreamedSet, subsample
from c2ir.data.transforms import check_mode, file_rng, resize_or_crop
from c2ir.errors import C2IRError
from c2ir.imglist import ImageList
from c2ir.names import escape_name

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_fingerprint(root: Path, digests: DigestCache | None = None) -> str:
    """Digest of a folder's images: relative path and SHA-256 content of every image.

    Folder datasets are keyed by this, not by their path or timestamps: adding, deleting or
    replacing an image gives a new key, even with the same size and a preserved mtime; touching
    one does not. Unchanged files are not read again when `digests` remembers them
    (`c2ir.data.digests`: keyed by size, mtime, inode and ctime).
    """
    if not root.is_dir():
        return "missing"
    return "sha256:" + tree_digest(root, list_images(root), digests)


def imglist_fingerprint(lst: ImageList, digests: DigestCache | None = None) -> str:
    """Content fingerprint for cache keys: the list's bytes plus the SHA-256 content of every listed image, the
    rule of folder data (`c2ir.data.digests`): editing the list, or replacing or deleting an image (even by one
    of the same size with its mtime kept) gives a new key; touching one does not. Unchanged images are not read
    again when `digests` remembers them (here, not in the torch-free c2ir.imglist: only the stages make keys)."""
    digest = hashlib.sha256(lst.list_path.read_bytes())
    present = [p for p in dict.fromkeys(lst.paths) if os.path.isfile(p)]
    missing = sorted(str(p.relative_to(lst.image_root).as_posix()) for p in set(lst.paths) - set(present))
    if present:  # the images' own folder (one table of remembered digests per data set, shared by its lists)
        base = Path(os.path.commonpath([str(p.parent) for p in present]))
        digest.update(f"images:{tree_digest(base, present, digests, complete=False)}\n".encode())
    digest.update("".join(f"missing:{m}\n" for m in missing).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


MAX_PIXELS = 8192 * 8192  # larger images are skipped (decompression-bomb guard), far above any benchmark image


def to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer images scaled to 8 bits (PIL's convert('L') would clip them to white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
        return Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(arr * 255.0 if arr.max(initial=0) <= 1 else arr), 0, 255).astype(np.uint8), "L")
    return img


def decode(path: Path, size: int, channels: int, mode: str, seed: int) -> np.ndarray | None:
    """One image as uint8 (C, size, size), or None if the file cannot be decoded."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:  # checked before decoding: a decompression bomb is skipped
                raise ValueError(f"{img.width}x{img.height} pixels exceeds the {MAX_PIXELS}-pixel limit")
            img = to_8bit(img).convert("L" if channels == 1 else "RGB")
            # per-file seed: the crop of an image does not depend on which other files exist
            arr = np.array(resize_or_crop(img, size, mode, file_rng(seed, path.name)), dtype=np.uint8)  # writable
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("skipping unreadable image %s (%s)", escape_name(path), escape_name(exc))
        return None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class FileSet(StreamedSet):
    """Image files decoded on demand (in the loader's workers): only the listing is held in memory."""

    def __init__(self, name: str, paths: list[Path], labels: list[int] | None, size: int, channels: int,
                 mode: str, seed: int):
        self.name, self.paths = name, list(paths)
        self.labels = None if labels is None else torch.tensor(labels, dtype=torch.long)
        self.size, self.channels, self.mode, self.seed = int(size), int(channels), mode, int(seed)
        check_mode(mode)  # fails early on a bad mode
        self.shape = (self.channels, self.size, self.size)
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> torch.Tensor | None:
        arr = decode(self.paths[i], self.size, self.channels, self.mode, self.seed)
        # (C, H, W) view of the decoded (H, W, C) pixels, not a copy: stacked into a batch it keeps
        # the channels-last memory layout the former decoding produced, so convolutions round alike
        return None if arr is None else torch.from_numpy(arr)


def decode_many(paths: list[Path], size: int, channels: int, mode: str, seed: int, name: str
                ) -> tuple[torch.Tensor, list[int]]:
    """Decode files in a small thread pool; returns the images and the indices that decoded."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(tqdm(pool.map(lambda p: decode(p, size, channels, mode, seed), paths),
                           total=len(paths), desc=f"decode {name}", leave=False, disable=not sys.stderr.isatty()))
    keep = [i for i, a in enumerate(arrays) if a is not None]
    if not keep:
        raise C2IRError(f"none of the {len(paths)} images of {name} could be decoded; check the files are images")
    skipped = len(paths) - len(keep)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s) of %d", name, skipped, len(paths))
    return torch.from_numpy(np.stack([arrays[i] for i in keep])), keep


def load_flat_folder(root: Path, name: str, size: int, channels: int, mode: str,
                     max_samples: int | None, seed: int, layout_hint: str = "", root_key: str = "") -> FileSet:
    """Every image below `root` (any nesting), unlabelled: the generic OOD source."""
    if not root.is_dir():
        hint = f" (expected layout: {layout_hint})" if layout_hint else ""
        raise C2IRError(f"{name}: image folder not found: {root}{hint}; set {root_key or 'its root='} to the folder")
    paths = list_images(root)
    if not paths:
        raise C2IRError(f"{name}: no images (jpg/png/...) found under {root}; point root= at a folder of images")
    idx = subsample(len(paths), max_samples, seed)
    if idx is not None:
        paths = [paths[i] for i in idx.tolist()]
    return FileSet(name, paths, None, size, channels, mode, seed)


def load_labelled_folder(root: Path, name: str, size: int, channels: int, mode: str,
                         max_samples: int | None, seed: int, num_classes: int | None,
                         layout_hint: str = "", every_class: bool = False) -> FileSet:
    """ImageFolder layout `<root>/<class>/*`, classes in sorted order (= torchvision's order).
    `every_class` (a training split): a class folder without images is an error, since a model trained
    on it never sees that class; elsewhere it is a warning."""
    if not root.is_dir():
        raise C2IRError(f"{name}: folder not found: {root} (expected layout: {layout_hint or '<root>/<split>/<class>/*.jpg'}); "
                        "set data.root")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise C2IRError(f"{name}: {root} has no class subfolders (expected <root>/<split>/<class>/*.jpg)")
    if num_classes is not None and len(classes) != num_classes:
        raise C2IRError(
            f"{name}: {root} has {len(classes)} class folders but data.num_classes={num_classes}; fix data.num_classes or the folder"
        )
    paths, labels, empty = [], [], []
    for label, cls in enumerate(classes):
        files = list_images(root / cls)
        paths += files
        labels += [label] * len(files)
        if not files:
            empty.append(escape_name(cls))
    if paths and empty:
        what = f"{name}: class folder(s) {empty[:5]} of {root} hold no images"
        if every_class:
            raise C2IRError(f"{what}; a model trained on this split never sees those classes: add images or remove "
                            "the class folders (from every split, so the labels stay the same)")
        log.warning("%s; those classes are never tested", what)
    if not paths:
        raise C2IRError(f"{name}: no images found in the class folders of {root}")
    idx = subsample(len(paths), max_samples, seed)
    if idx is not None:
        paths = [paths[i] for i in idx.tolist()]
        labels = [labels[i] for i in idx.tolist()]
    return FileSet(name, paths, labels, size, channels, mode, seed)
