"""Image lists in OpenOOD v1.5's layout: the benchmark's data sets without copying or re-sorting any file.

OpenOOD (Zhang et al., "OpenOOD v1.5", 2023; github.com/Jingkang50/OpenOOD) describes every split by a text
file under `<data root>/benchmark_imglist/<benchmark>/`, e.g. `test_cifar10.txt` or `test_tin.txt`, with one
`relative/path label` line per image (split at the first space; the label is an integer, or a Python dict
literal holding `label`; OOD lists carry -1), and paths relative to `<data root>/images_classic/` or
`<data root>/images_largescale/` (`openood/datasets/imglist_dataset.py`, `openood/evaluation_api/datasets.py`).

Torch-free on purpose: `validation.check_inputs` reads lists before torch is imported, so a missing list or image
is reported in about a second.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from c2ir.errors import C2IRError


LAYOUT = ("OpenOOD v1.5's data folder: <root>/benchmark_imglist/<benchmark>/<split>_<set>.txt, one "
          "'relative/path label' line per image (OOD sets: label -1), the images under <root>/images_classic/ or "
          "<root>/images_largescale/")


@dataclass(frozen=True)
class ImageList:
    """The parsed list: image files (absolute) and their labels (-1 for OOD), in the list's order."""

    list_path: Path
    image_root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


def locate(root: str | Path, imglist: str | Path, data_dir: str | Path) -> tuple[Path, Path]:
    """(list file, image folder): each relative to the data root unless absolute."""
    base = Path(str(root)).expanduser()
    lst, images = Path(str(imglist)).expanduser(), Path(str(data_dir)).expanduser()
    return (lst if lst.is_absolute() else base / lst), (images if images.is_absolute() else base / images)


def parse_label(extra: str) -> int:
    """The label field of a line: an integer, or a dict literal with a `label` entry (OpenOOD's extras)."""
    text = extra.strip()
    try:
        return int(text)
    except ValueError:
        pass
    value = ast.literal_eval(text)  # raises ValueError/SyntaxError on anything else
    if isinstance(value, dict) and "label" in value:
        return int(value["label"])
    raise ValueError(f"no label in {text[:60]!r}")


def read_imglist(list_path: Path, image_root: Path, name: str, key: str) -> ImageList:
    """Parse a list file; a missing or malformed list is one line naming the layout and the key to set."""
    if not list_path.is_file():
        raise C2IRError(f"{name}: image list not found: {list_path} (expected {LAYOUT}); set {key} to that folder")
    paths, labels = [], []
    try:
        lines = list_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise C2IRError(f"{name}: image list {list_path} is not UTF-8 text (byte {exc.start}); "
                        f"save it as UTF-8 (expected {LAYOUT})") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip("\r\n")
        if not line.strip():
            continue
        rel, _, extra = line.partition(" ")
        if not extra.strip() or rel.startswith("/"):
            raise C2IRError(f"{name}: line {number} of {list_path} is not 'relative/path label': {line[:80]!r} "
                            f"(expected {LAYOUT})")
        try:
            labels.append(parse_label(extra))
        except (ValueError, SyntaxError) as exc:
            raise C2IRError(f"{name}: line {number} of {list_path} has no integer label ({exc}): {line[:80]!r}") from None
        paths.append(image_root / rel)
    if not paths:
        raise C2IRError(f"{name}: image list {list_path} lists no images (expected {LAYOUT})")
    return ImageList(list_path, image_root, tuple(paths), tuple(labels))


def check_images(lst: ImageList, name: str, key: str) -> None:
    """Every listed image exists (one stat each); otherwise one line with the count and the first missing file."""
    missing = [p for p in lst.paths if not os.path.isfile(p)]
    if missing:
        raise C2IRError(f"{name}: {len(missing)} of {len(lst)} images listed in {lst.list_path} are missing under "
                        f"{lst.image_root} (first: {missing[0]}); expected {LAYOUT}; set {key} to that folder")


_CHECKED: set[tuple] = set()  # (list, its size and mtime, image folder) whose images all existed in this process


def open_imglist(root: str | Path, imglist: str | Path, data_dir: str | Path, name: str, key: str,
                 check: bool = True) -> ImageList:
    """Locate, parse and (by default) check a list: the one entry point of the data sources and the config check.

    The check stats every listed image once per process and list version (the config check, the early listing
    of `c2ir run` and the loaders then share it); the fingerprint reads their contents (remembered digests)."""
    list_path, image_root = locate(root, imglist, data_dir)
    lst = read_imglist(list_path, image_root, name, key)
    if check:
        st = list_path.stat()
        version = (str(list_path), st.st_size, st.st_mtime_ns, str(image_root))
        if version not in _CHECKED:
            check_images(lst, name, key)
            _CHECKED.add(version)
    return lst
