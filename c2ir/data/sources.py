"""Dataset sources by config: in-distribution (`data=`) and OOD (`ood=[...]`) sets as ImageSets.

Every source returns uint8 images already brought to the model's input size and
channel count; normalisation happens later (see `imageset.Normalizer`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c2ir.data import embedded
from c2ir.data.folders import (decode, folder_fingerprint, load_flat_folder, load_labelled_folder,
                               resize_or_crop_batch)
from c2ir.data.imageset import ImageSet, subsample
from c2ir.data.shared import ensure_extracted
from c2ir.errors import C2IRError

log = logging.getLogger(__name__)

TORCHVISION_SETS = ("cifar10", "cifar100", "svhn", "mnist", "dtd", "places365")


def _to_input(images: np.ndarray, size: int, channels: int, mode: str, seed: int) -> torch.Tensor:
    """uint8 (N, C, H, W) array to the model's channels and size (a no-op for CIFAR into a CIFAR model)."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.shape[1] != channels and channels == 1:  # colour to grey: channel mean
        t = t.float().mean(1, keepdim=True).round().to(torch.uint8)
    t = resize_or_crop_batch(t, size, mode, seed)
    if t.shape[1] != channels:  # grey to colour: the same image in every channel (resized once)
        t = t.expand(len(t), channels, size, size).contiguous()
    return t


def _torchvision(dataset: str, root: str, split: str, download: bool, size: int, channels: int,
                 mode: str, max_samples: int | None, seed: int, name: str) -> ImageSet:
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
            f"put the files there or set the root= of {name}"
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
        images = _to_input(data, size, channels, mode, seed)
        return ImageSet(name, images, torch.as_tensor(labels, dtype=torch.long))
    # datasets of files (DTD, Places365): decode the chosen files directly
    files = [Path(f) for f in (getattr(ds, "_image_files", None) or [p for p, _ in ds.imgs])]
    idx = subsample(len(files), max_samples, seed)
    if idx is not None:
        files = [files[i] for i in idx.tolist()]
    arrays = [a for a in (decode(f, size, channels, mode, seed) for f in files) if a is not None]
    return ImageSet(name, torch.from_numpy(np.stack(arrays)), None, skipped=len(files) - len(arrays))


def _folder_root(cfg: Any, name: str) -> Path:
    """An explicit `root`, else the shared archive's extraction (when the config names one)."""
    if cfg.get("root"):
        return Path(str(cfg.root)).expanduser()
    if cfg.get("archive"):
        return ensure_extracted(str(cfg.archive)) / str(cfg.get("subdir") or "")
    raise C2IRError(f"{name}: no root= given; set root= to the folder ({cfg.get('layout', 'a folder of images')})")


def _folder_content(cfg: Any, suffix: str = "") -> str | None:
    """Fingerprint of a folder source: the listing of `root`, or the shared archive's identity."""
    if cfg.get("root"):
        return folder_fingerprint(Path(str(cfg.root)).expanduser() / suffix)
    if cfg.get("archive"):
        from c2ir.data.shared import shared_dir

        base = shared_dir()
        src = base / "data" / str(cfg.archive) if base else None
        if src is None or not src.is_file():
            return f"archive:{cfg.archive}:missing"
        st = src.stat()
        return f"archive:{cfg.archive}:{st.st_size}:{st.st_mtime_ns}:{cfg.get('subdir') or ''}/{suffix}"
    return None


def id_fingerprint(data_cfg: Any, split: str) -> str | None:
    """Content fingerprint of an ID split read from files (None for sources that are not folders)."""
    if data_cfg.source not in ("imagefolder", "shared"):
        return None
    return _folder_content(data_cfg, str(data_cfg.get(f"{split}_split", split)))


def ood_fingerprint(cfg: Any, name: str) -> str | None:
    """Content fingerprint of a folder OOD set (None for generated or torchvision sets)."""
    return _folder_content(cfg) if cfg.get("source") == "folder" else None


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


def load_id(data_cfg: Any, split: str) -> ImageSet:
    """The in-distribution set's `train` or `test` split."""
    source = data_cfg.source
    size, ch, seed = int(data_cfg.image_size), int(data_cfg.channels), int(data_cfg.get("seed", 0))
    max_n = data_cfg.get(f"max_{split}_samples")
    name = f"{data_cfg.name}-{split}"
    if source == "sklearn_digits":
        ds = embedded.digits(split, seed)
        idx = subsample(len(ds), max_n, seed)
        ds = ds if idx is None else ds.subset(idx)
    elif source == "torchvision":
        ds = _torchvision(str(data_cfg.get("dataset", data_cfg.name)), str(data_cfg.root), split,
                          bool(data_cfg.get("download", True)), size, ch, "resize", max_n, seed, name)
    elif source in ("imagefolder", "shared"):
        base = _folder_root(data_cfg, name)
        check_split_classes(base, [str(data_cfg.get(f"{s}_split", s)) for s in ("train", "test")])
        root = base / str(data_cfg.get(f"{split}_split", split))
        ds = load_labelled_folder(root, name, size, ch, "resize", max_n, seed, int(data_cfg.num_classes))
    else:
        raise C2IRError(f"unknown data.source={source!r}; use sklearn_digits, torchvision, imagefolder or shared")
    if ds.labels is not None and len(ds) and int(ds.labels.max()) >= int(data_cfg.num_classes):
        raise C2IRError(
            f"{name}: labels go up to {int(ds.labels.max())} but data.num_classes={data_cfg.num_classes}; fix data.num_classes"
        )
    ds.name = name
    return ds


def load_ood(name: str, cfg: Any, data_cfg: Any, id_test: ImageSet | None = None) -> ImageSet:
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
        ds = embedded.pixel_shuffled(id_test, seed)
        idx = subsample(len(ds), max_n, seed)
        ds = ds if idx is None else ds.subset(idx)
    elif source == "torchvision":
        ds = _torchvision(str(cfg.dataset), str(cfg.root), str(cfg.get("split", "test")), bool(cfg.get("download", True)),
                          size, ch, str(cfg.get("resize", "resize")), max_n, seed, name)
    elif source == "folder":
        root = _maybe_download(cfg, name)
        ds = load_flat_folder(root, name, size, ch, str(cfg.get("resize", "resize")), max_n, seed,
                              str(cfg.get("layout", "")))
    else:
        raise C2IRError(f"{name}: unknown source {source!r}; use folder, torchvision, noise, photo_patches or pixel_shuffled")
    ds.name, ds.labels = name, None
    return ds


def _maybe_download(cfg: Any, name: str) -> Path:
    """Folder of an OOD set; downloads the public archive when it is missing and a URL is known."""
    root = _folder_root(cfg, name)
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
