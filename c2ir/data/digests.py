"""Content digests of data files, so folder data sets and archive extractions are keyed by their bytes.

Why: a key made of (path, size, mtime) is fooled by an image replaced with another of the same
size whose mtime was kept (`cp -p`, `rsync -t`, unpacking another version), and cached features
of the old images are then served as the new ones. So every file's SHA-256 enters the key.

Hashing 10,000 images on every run would cost a cold read of the folder each time, so a file's
digest is remembered in a table per folder (`DigestCache`), keyed by (size, mtime_ns, inode,
ctime_ns). The kernel sets ctime to the current time on every write, rename, chmod and utime,
and no user program can set it back (`cp -p`, `rsync -t` and `tar` restore mtime, not ctime),
so a file whose bytes changed never matches its remembered entry. An entry recorded while the
file was changing (ctime within `RACY_NS` of the moment it was hashed, the "racy git" case of
a timestamp tick that hides a second write) is not trusted and the file is hashed again.
Measured cost on CIFAR-10's 10,000 test JPEGs: docs/BENCHMARKS.md section 14.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from c2ir.cache import atomic_write_bytes, file_sha256

log = logging.getLogger(__name__)

RACY_NS = 2_000_000_000  # an entry hashed less than 2 s after the file last changed is re-hashed next time
TABLE_VERSION = 1


def _ident(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


# in-process memo: (absolute path, size, mtime_ns, inode, ctime_ns) -> (sha256, hashed_at_ns)
_MEMO: dict[tuple, tuple[str, int]] = {}


class DigestCache:
    """SHA-256 of files, remembered per folder in `<folder>/<hash of the data folder>.json`
    (None: remembered in this process only). Safe to share between processes: a table is
    replaced atomically, and an entry that does not match the file's identity is ignored."""

    def __init__(self, folder: Path | None):
        self.folder = None if folder is None else Path(folder)

    def _table_path(self, root: Path) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha256(str(root).encode('utf-8', 'surrogatepass')).hexdigest()[:20]}.json"

    def _load(self, root: Path) -> dict[str, list]:
        path = self._table_path(root)
        if path is None or not path.is_file():
            return {}
        try:
            table = json.loads(path.read_text())
            if table.get("version") == TABLE_VERSION and table.get("root") == str(root):
                return dict(table["entries"])
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass
        log.info("file digests: table %s unreadable; hashing the files again", path)
        return {}

    def _save(self, root: Path, entries: dict[str, list]) -> None:
        path = self._table_path(root)
        if path is None:
            return
        try:
            atomic_write_bytes(path, json.dumps({"version": TABLE_VERSION, "root": str(root), "entries": entries},
                                                separators=(",", ":")).encode())
        except OSError as exc:  # a read-only cache only costs re-hashing next time
            log.warning("file digests: could not save %s (%s); files will be hashed again next time", path, exc)

    def digests(self, root: Path, files: Sequence[Path], workers: int = 4, complete: bool = False) -> list[str]:
        """SHA-256 of each of `files` (all below `root`), reusing remembered digests of unchanged files.
        `complete`: `files` is every file of `root` that is hashed, so entries of other files are dropped."""
        root = Path(os.path.abspath(root))
        table = self._load(root)
        out: list[str | None] = [None] * len(files)
        todo: list[tuple[int, Path, str, os.stat_result]] = []
        now = time.time_ns()
        seen: set[str] = set()
        for i, f in enumerate(files):
            f = Path(os.path.abspath(f))
            st = f.stat()
            rel = os.path.relpath(f, root)
            seen.add(rel)
            ident = _ident(st)
            memo = _MEMO.get((str(f), *ident))
            entry = table.get(rel)
            if memo is not None and st.st_ctime_ns < memo[1] - RACY_NS:
                out[i] = memo[0]
            elif isinstance(entry, list) and len(entry) == 6 and entry[:4] == ident and st.st_ctime_ns < entry[5] - RACY_NS:
                out[i] = entry[4]
                _MEMO[(str(f), *ident)] = (entry[4], entry[5])
            else:
                todo.append((i, f, rel, st))
        stale = set(table) - seen if complete else set()
        for rel in stale:
            del table[rel]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                hashed = list(pool.map(lambda t: file_sha256(t[1]), todo))
            for (i, f, rel, st), sha in zip(todo, hashed):
                after = f.stat()
                out[i] = sha
                if _ident(after) != _ident(st):  # changed while being read: use it, never remember it
                    continue
                table[rel] = [*_ident(st), sha, now]
                _MEMO[(str(f), *_ident(st))] = (sha, now)
        if todo or stale:
            self._save(root, table)
        return [s for s in out if s is not None]

    def digest(self, path: Path) -> str:
        """SHA-256 of one file (remembered under its parent folder)."""
        path = Path(os.path.abspath(path))
        return self.digests(path.parent, [path])[0]


def tree_digest(root: Path, files: Iterable[Path], cache: DigestCache | None = None) -> str:
    """Digest of a set of files below `root`: their relative paths and SHA-256 contents, in sorted order."""
    files = sorted(files)
    shas = (cache or DigestCache(None)).digests(root, files, complete=True)
    h = hashlib.sha256()
    for f, sha in zip(files, shas):
        h.update(f"{Path(f).relative_to(root).as_posix()}\0{sha}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]
