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
Measured cost on CIFAR-10's 10,000 test JPEGs: docs/BENCHMARKS.md section 15.
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

    def digests(self, root: Path, files: Sequence[Path | str], workers: int = 4, complete: bool = False) -> list[str]:
        """SHA-256 of each of `files` (all below `root`), reusing remembered digests of unchanged files.
        `complete`: `files` is every file of `root` that is hashed, so entries of other files are dropped."""
        return [sha for _, sha in self.relative_digests(root, files, workers, complete)]

    def relative_digests(self, root: Path, files: Sequence[Path | str], workers: int = 4, complete: bool = False
                         ) -> list[tuple[str, str]]:
        """(path relative to `root`, SHA-256) of each of `files` (plain string work per file: the warm path costs
        one stat per file, so that a 60,000-file folder is checked in well under a second on an idle machine)."""
        base = os.path.abspath(root)
        table = self._load(Path(base))
        prefix = base.rstrip(os.sep) + os.sep
        out: list[tuple[str, str]] = []
        todo: list[tuple[int, str, str, list[int]]] = []
        now = time.time_ns()
        for i, f in enumerate(files):
            full = os.path.abspath(f)
            rel = full[len(prefix):] if full.startswith(prefix) else os.path.relpath(full, base)
            st = os.stat(full)
            ident = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
            memo = _MEMO.get((full, *ident))
            entry = table.get(rel)
            if memo is not None and st.st_ctime_ns < memo[1] - RACY_NS:
                out.append((rel, memo[0]))
            elif isinstance(entry, list) and len(entry) == 6 and entry[:4] == ident and st.st_ctime_ns < entry[5] - RACY_NS:
                out.append((rel, entry[4]))
                _MEMO[(full, *ident)] = (entry[4], entry[5])
            else:
                out.append((rel, ""))
                todo.append((i, full, rel, ident))
        stale = set(table) - {rel for rel, _ in out} if complete else set()
        for rel in stale:
            del table[rel]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                hashed = list(pool.map(lambda t: file_sha256(Path(t[1])), todo))
            for (i, full, rel, ident), sha in zip(todo, hashed):
                out[i] = (rel, sha)
                if _ident(os.stat(full)) != ident:  # changed while being read: use it, never remember it
                    continue
                table[rel] = [*ident, sha, now]
                _MEMO[(full, *ident)] = (sha, now)
        if todo or stale:
            self._save(Path(base), table)
        return out

    def remember(self, root: Path, digests: dict[str, str], hashed_at_ns: int) -> None:
        """Record digests computed elsewhere (`{relative path: SHA-256}` of files below `root`), as if hashed at
        `hashed_at_ns`. Only for files that nobody else could change between their hashing and that moment
        (a private folder renamed into place just before: the shared-archive extraction)."""
        base = os.path.abspath(root)
        table = self._load(Path(base))
        for rel, sha in digests.items():
            full = os.path.join(base, rel)
            ident = _ident(os.stat(full))
            table[rel] = [*ident, sha, hashed_at_ns]
            _MEMO[(full, *ident)] = (sha, hashed_at_ns)
        self._save(Path(base), table)

    def digest(self, path: Path) -> str:
        """SHA-256 of one file (remembered under its parent folder)."""
        path = Path(os.path.abspath(path))
        return self.digests(path.parent, [path])[0]


def tree_digest(root: Path, files: Iterable[Path | str], cache: DigestCache | None = None, complete: bool = True) -> str:
    """Digest of a set of files below `root`: their relative paths and SHA-256 contents, in sorted order.
    `complete`: `files` is every hashed file of `root` (a folder data set), so the remembered digests of other
    files are dropped; False when several sets take files from one folder (image lists share their images' folder)."""
    pairs = sorted((cache or DigestCache(None)).relative_digests(root, list(files), complete=complete))
    h = hashlib.sha256()
    for rel, sha in pairs:
        h.update(f"{rel.replace(os.sep, '/')}\0{sha}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]
