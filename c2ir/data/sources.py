"""Dataset sources by config: in-distribution (`data=`) and OOD (`ood=[...]`) sets as ImageSets.

Every source returns a dataset of uint8 images brought to the model's input size and channel
count (small sets as an in-memory `ImageSet`, files and resized arrays as a streamed set decoded
per item by the loader's workers); normalisation happens later (see `imageset.Normalizer`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c2ir.data import embedded
from c2ir.data.folders import FileSet, folder_fingerprint, imglist_fingerprint, load_flat_folder, load_labelled_folder
from c2ir.data.loader import materialize
from c2ir.data.imageset import AnyImageSet, ImageSet, StreamedSet, subsample
from c2ir.data.transforms import check_mode, fit_chw, index_rng
from c2ir.data.digests import DigestCache
from c2ir.data.shared import archive_digest, ensure_extracted
from c2ir.errors import C2IRError
from c2ir.imglist import open_imglist

log = logging.getLogger(__name__)

TORCHVISION_SETS = ("cifar10", "cifar100", "svhn", "mnist", "dtd", "places365")


class ArraySet(StreamedSet):
    """An in-memory uint8 (N, C, H, W) array at its own size, fitted to the model's size per item.

    Holds the source array (e.g. CIFAR at 32 px), never the resized copy (e.g. 224 px, 49x larger).
    Item i goes through the same `resize_or_crop` as files (`transforms.fit_chw`), its random crop
    seeded by (set seed, i), so an item's pixels do not depend on the batch or the worker.
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray | None, size: int, channels: int,
                 mode: str, seed: int):
        self.name, self.array = name, np.ascontiguousarray(images)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.size, self.channels, self.mode, self.seed = int(size), int(channels), check_mode(mode), int(seed)
        self.shape, self.skipped = (self.channels, self.size, self.size), 0

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def image(self, i: int) -> torch.Tensor:
        return fit_image(self.array[i], self.size, self.channels, self.mode, self.seed, i)


def fit_image(image: np.ndarray, size: int, channels: int, mode: str, seed: int, index: int) -> torch.Tensor:
    """Array image `index` (uint8 (C, H, W)) to the model's channels and size: colour to grey by the
    channel mean before resizing, grey to colour by repeating the resized channel."""
    if image.shape[0] != channels and channels == 1:
        image = np.round(image.astype(np.float32).mean(0, keepdims=True)).astype(np.uint8)
    out = fit_chw(image, size, mode, index_rng(seed, index))
    if out.shape[0] != channels:
        out = np.repeat(out, channels, axis=0)
    return torch.from_numpy(out)


def _fit_array(images: np.ndarray, labels: np.ndarray | None, size: int, channels: int, mode: str, seed: int,
               name: str) -> ImageSet | ArraySet:
    """Already the model's size and channels: kept as the tensor it is; otherwise fitted per item."""
    n, c, h, w = images.shape
    if (c, h, w) == (channels, size, size):
        lab = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        return ImageSet(name, torch.from_numpy(np.ascontiguousarray(images)), lab)
    return ArraySet(name, images, labels, size, channels, mode, seed)


def _torchvision(dataset: str, root: str, split: str, download: bool, size: int, channels: int,
                 mode: str, max_samples: int | None, seed: int, name: str, root_key: str = "root") -> ImageSet:
    import torchvision.datasets as tvd

    root_path = Path(root).expanduser()
    train = split == "train"
    try:
        if dataset == "cifar10":
            ds = tvd.CIFAR10(str(root_path), train=train, download=download)
        elif dataset == "cifar100":
            ds = tvd.CIFAR100(str(root_path), train=train, download=download)
        elif dataset == "svhn":
            ds = tvd.SVHN(str(root_path), split="train" if train else "test", download=download)
        elif dataset == "mnist":
            ds = tvd.MNIST(str(root_path), train=train, download=download)
        elif dataset == "dtd":
            ds = tvd.DTD(str(root_path), split="train" if train else "test", download=download)
        elif dataset == "places365":
            ds = tvd.Places365(str(root_path), split="train-standard" if train else "val", small=True, download=download)
        else:
            raise C2IRError(f"{name}: unknown torchvision dataset {dataset!r}; choose one of {TORCHVISION_SETS}")
    except C2IRError:
        raise
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError/URLError/OSError alike
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise C2IRError(
            f"{name}: torchvision {dataset} not found under {root_path} and could not be downloaded ({why}); "
            f"put the files there or set {root_key}=DIR (or paths.data_root=DIR)"
            + ("; offline, data=cifar10_jpeg reads CIFAR-10 from the shared folder" if dataset == "cifar10" else "")
        ) from exc
    if hasattr(ds, "data") and isinstance(ds.data, (np.ndarray, torch.Tensor)):
        data = np.asarray(ds.data)
        if data.ndim == 3:  # MNIST (N, H, W)
            data = data[:, None]
        elif data.shape[-1] in (1, 3):  # CIFAR (N, H, W, C)
            data = data.transpose(0, 3, 1, 2)
        labels = np.asarray(getattr(ds, "targets", getattr(ds, "labels", np.zeros(len(data)))))
        idx = subsample(len(data), max_samples, seed)
        if idx is not None:
            data, labels = data[idx.numpy()], labels[idx.numpy()]
        return _fit_array(data, labels, size, channels, mode, seed, name)
    # datasets of files (DTD, Places365): decode the chosen files directly
    files = [Path(f) for f in (getattr(ds, "_image_files", None) or [p for p, _ in ds.imgs])]
    idx = subsample(len(files), max_samples, seed)
    if idx is not None:
        files = [files[i] for i in idx.tolist()]
    return FileSet(name, files, None, size, channels, mode, seed)


def _folder_root(cfg: Any, name: str, key: str) -> Path:
    """An explicit `root`, else the shared archive's extraction (when the config names one)."""
    if cfg.get("root"):
        return Path(str(cfg.root)).expanduser()
    if cfg.get("archive"):
        return ensure_extracted(str(cfg.archive)) / str(cfg.get("subdir") or "")
    raise C2IRError(f"{name}: no folder given; set {key}=DIR ({cfg.get('layout', 'a folder of images')})")


def _folder_content(cfg: Any, suffix: str = "", digests: DigestCache | None = None) -> str | None:
    """Content fingerprint of a folder source: the images of `root` (paths and SHA-256 contents), or the
    shared archive's SHA-256 (its extraction is checked against the archive before it is read)."""
    if cfg.get("root"):
        return folder_fingerprint(Path(str(cfg.root)).expanduser() / suffix, digests)
    if cfg.get("archive"):
        try:
            sha = archive_digest(str(cfg.archive))
        except C2IRError:
            return f"archive:{cfg.archive}:missing"
        return f"archive:{cfg.archive}:sha256:{sha}:{cfg.get('subdir') or ''}/{suffix}"
    return None


def id_imglist(data_cfg: Any, split: str, check: bool = True):
    """The image list of an ID split of an `imglist` source (OpenOOD's layout): `<split>_split` names the list."""
    return open_imglist(data_cfg.root, str(data_cfg.get(f"{split}_split", split)), data_cfg.get("data_dir") or "",
                        f"{data_cfg.name}-{split}", "paths.data_root or data.root", check)


def ood_imglist(cfg: Any, name: str, check: bool = True):
    """The image list of an `imglist` OOD set (`ood.<name>.imglist`, images under `ood.<name>.data_dir`)."""
    return open_imglist(cfg.root, str(cfg.imglist), cfg.get("data_dir") or "", name, f"paths.data_root or ood.{name}.root", check)


def id_fingerprint(data_cfg: Any, split: str, digests: DigestCache | None = None) -> str | None:
    """Content fingerprint of an ID split read from files (None for sources that are not folders or lists)."""
    if data_cfg.source == "imglist":
        return "imglist:" + imglist_fingerprint(id_imglist(data_cfg, split, check=False), digests)
    if data_cfg.source not in ("imagefolder", "shared"):
        return None
    return _folder_content(data_cfg, str(data_cfg.get(f"{split}_split", split)), digests)


def ood_fingerprint(cfg: Any, name: str, digests: DigestCache | None = None) -> str | None:
    """Content fingerprint of a folder or image-list OOD set (None for generated or torchvision sets)."""
    if cfg.get("source") == "imglist":
        return "imglist:" + imglist_fingerprint(ood_imglist(cfg, name, check=False), digests)
    return _folder_content(cfg, "", digests) if cfg.get("source") == "folder" else None


def _subset_list(lst, max_n: int | None, seed: int) -> tuple[list[Path], list[int]]:
    """The listed files and labels, a fixed-seed subset of `max_n` when set (list order kept)."""
    paths, labels = list(lst.paths), list(lst.labels)
    idx = subsample(len(paths), max_n, seed)
    if idx is not None:
        paths, labels = [paths[i] for i in idx.tolist()], [labels[i] for i in idx.tolist()]
    return paths, labels


def check_split_classes(base: Path, splits: list[str]) -> None:
    """Labels come from sorted class-folder names: train and test must have the same names, or the
    labels of one split silently mean other classes."""
    found = {s: sorted(d.name for d in (base / s).iterdir() if d.is_dir()) for s in splits if (base / s).is_dir()}
    if len(found) < 2:
        return
    (a, ca), (b, cb) = found.items()
    if ca != cb:
        only_a, only_b = sorted(set(ca) - set(cb)), sorted(set(cb) - set(ca))
        raise C2IRError(f"class folders differ between {base / a} and {base / b}: only in {a}: {only_a[:5]}, "
                        f"only in {b}: {only_b[:5]}; both splits need the same class folder names")


def load_id(data_cfg: Any, split: str) -> AnyImageSet:
    """The in-distribution set's `train` or `test` split (listed, not decoded: see `c2ir.data.loader`)."""
    source = data_cfg.source
    size, ch, seed = int(data_cfg.image_size), int(data_cfg.channels), int(data_cfg.get("seed", 0))
    mode = str(data_cfg.get("resize") or "resize")
    max_n = data_cfg.get(f"max_{split}_samples")
    name = f"{data_cfg.name}-{split}"
    if source == "sklearn_digits":
        ds = embedded.digits(split, seed)
        idx = subsample(len(ds), max_n, seed)
        ds = ds if idx is None else ds.subset(idx)
    elif source == "torchvision":
        ds = _torchvision(str(data_cfg.get("dataset", data_cfg.name)), str(data_cfg.root), split,
                          bool(data_cfg.get("download", True)), size, ch, mode, max_n, seed, name, "data.root")
    elif source in ("imagefolder", "shared"):
        base = _folder_root(data_cfg, name, "data.root")
        check_split_classes(base, [str(data_cfg.get(f"{s}_split", s)) for s in ("train", "test")])
        root = base / str(data_cfg.get(f"{split}_split", split))
        ds = load_labelled_folder(root, name, size, ch, mode, max_n, seed, int(data_cfg.num_classes),
                                  str(data_cfg.get("layout") or ""), every_class=split == "train")
    elif source == "imglist":
        paths, labels = _subset_list(id_imglist(data_cfg, split), max_n, seed)
        if min(labels) < 0:
            raise C2IRError(f"{name}: the ID list {data_cfg.get(f'{split}_split')} has OOD labels (-1); "
                            f"point data.{split}_split at an in-distribution list")
        ds = FileSet(name, paths, labels, size, ch, mode, seed)
    else:
        raise C2IRError(f"unknown data.source={source!r}; use sklearn_digits, torchvision, imagefolder, shared or imglist")
    if ds.labels is not None and len(ds) and int(ds.labels.max()) >= int(data_cfg.num_classes):
        raise C2IRError(
            f"{name}: labels go up to {int(ds.labels.max())} but data.num_classes={data_cfg.num_classes}; fix data.num_classes"
        )
    ds.name = name
    return ds


def load_ood(name: str, cfg: Any, data_cfg: Any, id_test: AnyImageSet | None = None, num_workers: int = 0
             ) -> AnyImageSet:
    """One OOD set from its `ood.<name>` config, at the in-distribution input size."""
    size, ch = int(data_cfg.image_size), int(data_cfg.channels)
    seed, max_n = int(cfg.get("seed", 0)), cfg.get("max_samples")
    source = cfg.source
    if source == "noise":
        ds = embedded.noise(str(cfg.kind), int(max_n or 2000), ch, size, seed)
    elif source == "photo_patches":
        ds = embedded.photo_patches(int(max_n or 1000), ch, size, seed)
    elif source == "pixel_shuffled":
        if id_test is None:
            raise C2IRError(f"{name}: pixel_shuffled needs the in-distribution test set")
        # permutations are drawn in sequence over the whole set: it is held in memory (small sets only)
        ds = embedded.pixel_shuffled(materialize(id_test, num_workers=num_workers), seed)
        idx = subsample(len(ds), max_n, seed)
        ds = ds if idx is None else ds.subset(idx)
    elif source == "torchvision":
        ds = _torchvision(str(cfg.dataset), str(cfg.root), str(cfg.get("split", "test")), bool(cfg.get("download", True)),
                          size, ch, str(cfg.get("resize", "resize")), max_n, seed, name, f"ood.{name}.root")
    elif source == "folder":
        root = _maybe_download(cfg, name)
        ds = load_flat_folder(root, name, size, ch, str(cfg.get("resize", "resize")), max_n, seed,
                              str(cfg.get("layout", "")), f"ood.{name}.root")
    elif source == "imglist":
        paths, _ = _subset_list(ood_imglist(cfg, name), max_n, seed)
        ds = FileSet(name, paths, None, size, ch, str(cfg.get("resize", "resize")), seed)
    else:
        raise C2IRError(f"{name}: unknown source {source!r}; use folder, imglist, torchvision, noise, photo_patches or "
                        "pixel_shuffled")
    ds.name, ds.labels = name, None
    return ds


def _maybe_download(cfg: Any, name: str) -> Path:
    """Folder of an OOD set; downloads the public archive when it is missing and a URL is known."""
    root = _folder_root(cfg, name, f"ood.{name}.root")
    if root.is_dir() or not cfg.get("url") or not cfg.get("download", False):
        return root
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(str(cfg.url), str(root.parent), md5=cfg.get("md5"))
    except Exception as exc:  # noqa: BLE001
        raise C2IRError(
            f"{name}: {root} is missing and the download from {cfg.url} failed ({type(exc).__name__}); "
            f"put the images there ({cfg.get('layout', 'a folder of images')}) or set root="
        ) from exc
    return root
