"""Extraction of the read-only `shared/` archives into a per-user cache, once.

Idempotent and safe to interrupt: an archive is unpacked into a temporary folder
that is renamed into place only when complete, under a file lock. The folder is keyed by
the archive's content and checked against it (`extraction_problem`), so a replaced archive
or a damaged extraction is never read as the data set.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import os
import shutil
import tarfile
import time
import uuid
import zlib
from pathlib import Path

from c2ir.cache import atomic_write_json, file_sha256
from c2ir.data.digests import DigestCache
from c2ir.errors import C2IRError
from c2ir.names import escape_name

log = logging.getLogger(__name__)

MARKER = ".complete"  # JSON: the archive's name and SHA-256, and the SHA-256 of every extracted file


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


def _digests() -> DigestCache:
    return DigestCache(extraction_root() / ".digests")


def archive_digest(archive: str) -> str:
    """SHA-256 of a shared archive (remembered while the file is unchanged): what its extraction and
    the data sets read from it are keyed by."""
    return _digests().digest(_archive_path(archive))


def _archive_path(archive: str) -> Path:
    sdir = shared_dir()
    if sdir is None:
        raise C2IRError(
            f"shared data folder not found for archive {archive}; set C2IR_SHARED_DIR to the folder holding data/{archive}"
        )
    src = sdir / "data" / archive
    if not src.is_file():
        raise C2IRError(f"shared archive missing: {src}; set C2IR_SHARED_DIR to the folder holding data/{archive}")
    return src


def _extracted_files(dest: Path) -> list[str]:
    """Relative paths (POSIX) of every file of an extraction but its marker (os.walk: no stat per entry)."""
    out = []
    for folder, _, names in os.walk(dest):
        rel = os.path.relpath(folder, dest)
        out += [n if rel == "." else f"{rel}/{n}".replace(os.sep, "/") for n in names]
    return sorted(p for p in out if p != MARKER)


# extractions verified in this process: (folder, archive sha256, marker identity)
_VERIFIED: set[tuple[str, str, tuple[int, int]]] = set()


def extraction_problem(dest: Path, sha: str) -> str | None:
    """Why the folder `dest` is not a complete, unmodified extraction of the archive with SHA-256 `sha`
    (None: it is). Its marker lists every extracted file with its SHA-256; the files are compared by
    content (unchanged files are not read again: `c2ir.data.digests`)."""
    marker = dest / MARKER
    if not marker.is_file():
        return "not extracted" if not dest.exists() else f"{marker.name} is missing (an interrupted or foreign extraction)"
    st = marker.stat()
    ident = (str(dest), sha, (st.st_mtime_ns, st.st_ino))
    if ident in _VERIFIED:
        return None
    try:
        meta = json.loads(marker.read_text())
        files = meta["files"]
        assert isinstance(files, dict) and files and all(isinstance(v, str) for v in files.values())
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{marker.name} has no file table (written by an older c2ir or damaged)"
    if meta.get("sha256") != sha:
        return "the archive has changed since this folder was extracted"
    rel = _extracted_files(dest)
    missing, extra = sorted(set(files) - set(rel)), sorted(set(rel) - set(files))
    if missing or extra:
        return (f"{len(missing)} file(s) missing (e.g. {escape_name(missing[0])})" if missing else
                f"{len(extra)} file(s) not in the archive (e.g. {escape_name(extra[0])})")
    for name, digest in zip(rel, _digests().digests(dest, [os.path.join(dest, r) for r in rel], complete=True)):
        if digest != files[name]:
            return f"{escape_name(name)} differs from the archive's copy"
    _VERIFIED.add(ident)
    return None


def ensure_extracted(archive: str) -> Path:
    """Path of the folder holding `archive`'s contents, extracting it first if needed.

    The folder is named after the archive's content (`<stem>-<sha256 prefix>`), so a replaced archive
    is extracted afresh, and it is checked against the archive on every first use in a process: a
    folder with missing, extra or modified files is reported and extracted again.
    """
    src = _archive_path(archive)
    sha = archive_digest(archive)
    stem = archive.removesuffix(".tar.gz").removesuffix(".tgz")
    dest = extraction_root() / f"{stem}-{sha[:12]}"
    if extraction_problem(dest, sha) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{stem}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        problem = extraction_problem(dest, sha)
        if problem is None:
            return dest
        if dest.exists():
            log.warning("shared data: %s is not a complete copy of %s (%s); extracting it again", dest, src, problem)
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
            table = {rel: file_sha256(tmp / rel) for rel in _extracted_files(tmp)}
            if not table:
                raise C2IRError(f"shared archive {src} holds no files; replace it with a good copy")
            atomic_write_json(tmp / MARKER, {"archive": archive, "sha256": sha, "files": table})
            if dest.exists():
                trash = dest.with_name(f".trash-{dest.name}-{uuid.uuid4().hex[:8]}")
                os.rename(dest, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, dest)
            # the files were hashed in a folder private to this process until the rename: remembering their
            # digests now spares the next process a cold read of the whole extraction (data/digests.py)
            _digests().remember(dest, table, time.time_ns())
            st = (dest / MARKER).stat()
            _VERIFIED.add((str(dest), sha, (st.st_mtime_ns, st.st_ino)))
        except OSError as exc:
            raise C2IRError(f"cannot extract {src} into {dest.parent} ({exc.strerror or exc}); free space there, or "
                            "set C2IR_SHARED_CACHE to a writable folder") from None
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
