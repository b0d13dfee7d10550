"""Decoding image folders into an ImageSet: `<root>/<class>/*` (labelled) or any tree of images (OOD)."""

from __future__ import annotations

import logging
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from c2ir.data.imageset import ImageSet, subsample
from c2ir.errors import C2IRError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_fingerprint(root: Path) -> str:
    """Hash of a folder's image listing (relative path, size, modification time of every image).

    Folder datasets are keyed by this, not by their path: adding, deleting, replacing or
    touching an image gives a new key (costs one stat per file, no decoding).
    """
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    if not root.is_dir():
        return "missing"
    for p in list_images(root):
        st = p.stat()
        digest.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


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


def resize_or_crop(img: Image.Image, size: int, mode: str, rng: np.random.Generator) -> Image.Image:
    """Bring an image to size x size: `resize`, `center_crop`, or `random_crop` (seeded)."""
    w, h = img.size
    if mode == "resize" or (mode.endswith("crop") and (w < size or h < size)):
        return img if (w, h) == (size, size) else img.resize((size, size), Image.BILINEAR)
    if mode == "center_crop":
        left, top = (w - size) // 2, (h - size) // 2
    elif mode == "random_crop":
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    else:
        raise C2IRError(f"unknown resize mode {mode!r}; use resize, center_crop or random_crop")
    return img.crop((left, top, left + size, top + size))


def resize_or_crop_batch(images: torch.Tensor, size: int, mode: str, seed: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images (C = 1 or 3) to size x size through `resize_or_crop`, image by
    image, so in-memory datasets (torchvision arrays) are resized exactly as files are. Image i's
    random crop is seeded by (seed, i)."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.contiguous()
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for i, img in enumerate(images.numpy()):
        pil = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
        arr = np.array(resize_or_crop(pil, size, mode, np.random.default_rng([seed, i])), dtype=np.uint8)
        out[i] = torch.from_numpy(arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return out


def decode(path: Path, size: int, channels: int, mode: str, seed: int) -> np.ndarray | None:
    """One image as uint8 (C, size, size), or None if the file cannot be decoded."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:  # checked before decoding: a decompression bomb is skipped
                raise ValueError(f"{img.width}x{img.height} pixels exceeds the {MAX_PIXELS}-pixel limit")
            img = to_8bit(img).convert("L" if channels == 1 else "RGB")
            # per-file seed: the crop of an image does not depend on which other files exist
            rng = np.random.default_rng([seed, zlib.crc32(path.name.encode())])
            arr = np.asarray(resize_or_crop(img, size, mode, rng), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("skipping unreadable image %s (%s)", path, exc)
        return None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


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
                     max_samples: int | None, seed: int, layout_hint: str = "") -> ImageSet:
    """Every image below `root` (any nesting), unlabelled: the generic OOD source."""
    if not root.is_dir():
        hint = f" (expected layout: {layout_hint})" if layout_hint else ""
        raise C2IRError(f"{name}: image folder not found: {root}{hint}; set its root= to the folder")
    paths = list_images(root)
    if not paths:
        raise C2IRError(f"{name}: no images (jpg/png/...) found under {root}; point root= at a folder of images")
    idx = subsample(len(paths), max_samples, seed)
    if idx is not None:
        paths = [paths[i] for i in idx.tolist()]
    images, keep = decode_many(paths, size, channels, mode, seed, name)
    return ImageSet(name, images, None, skipped=len(paths) - len(keep))


def load_labelled_folder(root: Path, name: str, size: int, channels: int, mode: str,
                         max_samples: int | None, seed: int, num_classes: int | None) -> ImageSet:
    """ImageFolder layout `<root>/<class>/*`, classes in sorted order (= torchvision's order)."""
    if not root.is_dir():
        raise C2IRError(f"{name}: folder not found: {root} (expected <root>/<split>/<class>/*.jpg); set data.root")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise C2IRError(f"{name}: {root} has no class subfolders (expected <root>/<split>/<class>/*.jpg)")
    if num_classes is not None and len(classes) != num_classes:
        raise C2IRError(
            f"{name}: {root} has {len(classes)} class folders but data.num_classes={num_classes}; fix data.num_classes or the folder"
        )
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = list_images(root / cls)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise C2IRError(f"{name}: no images found in the class folders of {root}")
    idx = subsample(len(paths), max_samples, seed)
    if idx is not None:
        paths = [paths[i] for i in idx.tolist()]
        labels = [labels[i] for i in idx.tolist()]
    images, keep = decode_many(paths, size, channels, mode, seed, name)
    return ImageSet(name, images, torch.tensor([labels[i] for i in keep]), skipped=len(paths) - len(keep))
