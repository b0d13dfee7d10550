"""Extraction of the read-only `shared/` archives into a per-user cache, once.

Idempotent and safe to interrupt: an archive is unpacked into a temporary folder
that is renamed into place only when complete, under a file lock.
"""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
import shutil
import tarfile
import uuid
import zlib
from pathlib import Path

from c2ir.errors import C2IRError

log = logging.getLogger(__name__)


def shared_dir() -> Path | None:
    """`C2IR_SHARED_DIR`, else the first `shared/` folder found beside the cwd or the source checkout."""
    env = os.environ.get("C2IR_SHARED_DIR")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve()
    for cand in [Path.cwd() / ".." / "shared", Path.cwd() / "shared", here.parents[2] / ".." / "shared"]:
        if (cand / "data").is_dir() or (cand / "models").is_dir():
            return cand.resolve()
    return None


def extraction_root() -> Path:
    base = os.environ.get("C2IR_SHARED_CACHE")
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(xdg) / "c2ir" / "shared-data"


def ensure_extracted(archive: str) -> Path:
    """Path of the folder holding `archive`'s contents, extracting it first if needed."""
    sdir = shared_dir()
    if sdir is None:
        raise C2IRError(
            f"shared data folder not found for archive {archive}; set C2IR_SHARED_DIR to the folder holding data/{archive}"
        )
    src = sdir / "data" / archive
    if not src.is_file():
        raise C2IRError(f"shared archive missing: {src}; set C2IR_SHARED_DIR to the folder holding data/{archive}")
    stem = archive.removesuffix(".tar.gz").removesuffix(".tgz")
    dest = extraction_root() / stem
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{stem}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if marker.is_file():
            return dest
        for left in dest.parent.glob(f".tmp-{stem}-*"):  # under the lock: left by a killed extraction
            log.info("removing %s left by an interrupted extraction", left)
            shutil.rmtree(left, ignore_errors=True)
        log.info("extracting %s into %s (once)", src, dest)
        tmp = dest.parent / f".tmp-{stem}-{uuid.uuid4().hex[:8]}"
        try:
            try:
                with tarfile.open(src, "r:gz") as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                why = str(exc).splitlines()[0][:160] if str(exc) else ""
                raise C2IRError(
                    f"shared archive {src} cannot be extracted ({type(exc).__name__}: {why}); it must be an intact "
                    ".tar.gz whose members stay inside it: replace it with a good copy"
                ) from None
            (tmp / ".complete").write_text(archive + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def shared_model_path(filename: str) -> Path:
    """Where a checkpoint of `shared/models/` is, or would be (so an error can name it)."""
    sdir = shared_dir()
    return (sdir if sdir else Path("../shared").resolve()) / "models" / filename


def shared_model(filename: str) -> Path:
    """Path of an existing checkpoint in `shared/models/`."""
    path = shared_model_path(filename)
    if not path.is_file():
        raise C2IRError(f"shared checkpoint {filename} not found; set C2IR_SHARED_DIR to the folder holding models/{filename}")
    return path
