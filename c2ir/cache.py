"""Artifact store: content-addressed stage outputs that later stages and reruns resume from.

Layout: `<root>/<stage>/<key>/` holds the artifact's files and a `manifest.json`
written last. The key hashes exactly the config a stage depends on plus the keys
of its upstream artifacts, so changing `ipm` re-runs only evaluate while changing
`synth.*` re-runs synthesis and everything downstream.

Crash safety: an artifact is built in a private temporary directory and published
with one `os.rename`, so a reader sees either nothing or a complete artifact. A
per-key file lock (`fcntl.flock`) makes concurrent processes that need the same
key wait for the first one instead of computing it twice.

Trust: the manifest records a SHA-256 content hash of every file, verified on every
read (once per process per unchanged file), so a damaged or edited file is never
used: it is reported, discarded and recomputed. A downstream artifact also records
the content digests of the upstream artifacts it was built from (`inputs`); when an
upstream artifact is recomputed with different bytes, the downstream one no longer
matches and is recomputed too, instead of staying cached on top of the repair.

Two stores share one interface (`lookup`, `get_or_create`, `resumable`): `ArtifactStore`
on disk (the CLI) and `MemoryStore` (the Python API: the same artifacts, held as tensors and
JSON values in memory). A build function writes through an output (`FolderOutput`,
`MemoryOutput`: `save_tensors`, `save_json`, `file`) and an artifact reads the same names back
(`tensors`, `json`), so one build and one load function serve both.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from c2ir.errors import C2IRError
from c2ir.names import escape_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KEY_LENGTH = 16


def canonical_json(obj: Any) -> str:
    """Stable JSON text for hashing: sorted keys, no whitespace variance."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def make_key(stage: str, config: Mapping[str, Any], upstream: Mapping[str, str] | None = None) -> str:
    """Hash of the stage name, the config subset it depends on, and its upstream keys."""
    payload = {"stage": stage, "config": config, "upstream": dict(upstream or {})}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


# (path, size, mtime_ns, inode, ctime_ns) -> hash: a file is hashed once per process while it is unchanged
_VERIFIED: dict[tuple[str, int, int, int, int], str] = {}


def cached_file_hash(path: Path) -> str:
    st = path.stat()
    ident = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if ident not in _VERIFIED:
        _VERIFIED[ident] = file_sha256(path)
    return _VERIFIED[ident]


def format_problem(path: Path) -> str | None:
    """Why a file's bytes are not the format its name says (safetensors header, JSON), or None.
    Checked after its content hash, so a planted file with a matching hash is still refused."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                list(f.keys())
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - safetensors, JSON and decoding errors alike
        return f"{path.name} is not a valid {path.suffix[1:]} file ({type(exc).__name__})"
    return None


def manifest_path_problem(name: str) -> str | None:
    """A manifest entry must name a file inside its artifact folder: relative, normalised, no `..`."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "." in parts or Path(*parts).as_posix() != name:
        return f"manifest.json lists {escape_name(name)!r}, a path outside the artifact folder"
    return None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed: checkpoints' identity and the manifest's content hash
    (SHA-256 through OpenSSL measured 1.7x faster than BLAKE2b here, docs/BENCHMARKS.md)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DamagedFile(Exception):
    """A stored file that is missing, unfinished or does not match its recorded content hash."""


class WriteError(C2IRError, OSError):
    """A write failed because of its disk or folder: one line for the user (a C2IRError) that code
    which tolerates failed writes (figure caches, digest tables) still catches as an OSError."""


def write_failure(path: Path, exc: BaseException) -> WriteError:
    """One line for a write that failed for a reason of the disk or folder (full, read-only, no permission)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:  # safetensors reports I/O errors as SafetensorError("... I/O error: No space left on device (os error 28)")
        text = str(exc)
        reason = text.split("I/O error:", 1)[-1].strip() if "I/O error:" in text else text.splitlines()[0][:160]
    return WriteError(f"cannot write into {path.parent} ({reason}); nothing was left half-written: free space on that "
                     "disk or make the folder writable, or choose another folder (cache_root=..., hydra.run.dir=...)")


def _is_io_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or "os error" in str(exc) or "I/O error" in str(exc)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Published files get the mode a plain open() would give (some writers, safetensors among them, create 0600
# files: a cache_root shared by a group or by cluster jobs of other users must stay readable).
FILE_MODE = 0o666 & ~_current_umask()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, renamed onto it when the body succeeds and removed when it fails;
    a failure of the disk or folder becomes one C2IRError line naming the folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(path, exc) from None
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, Exception) and _is_io_error(exc) and not isinstance(exc, WriteError):
            raise write_failure(path, exc) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers never see it half-written (temp name, fsync, rename)."""
    with _atomic(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically; tensors are made contiguous CPU copies."""
    with _atomic(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


# ----- resumable files (synthesis batches, training epochs): verified like artifacts -------------------
SIDECAR = ".sha256"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def _write_verified(path: Path, write: Callable[[Path], None]) -> None:
    """`write(path)` (atomic), then `<file>.sha256` (its size and SHA-256), the sidecar last: a file without a
    matching sidecar is unfinished or damaged. On any failure both are removed."""
    _sidecar(path).unlink(missing_ok=True)
    try:
        write(path)
        atomic_write_json(_sidecar(path), {"size": path.stat().st_size, "sha256": file_sha256(path)})
    except BaseException:
        discard_verified(path)
        raise


def _check_verified(path: Path) -> None:
    """DamagedFile unless `path` has the size and SHA-256 its sidecar recorded."""
    try:
        meta = json.loads(_sidecar(path).read_text())
        size, sha = int(meta["size"]), str(meta["sha256"])
    except FileNotFoundError:
        raise DamagedFile("no content hash beside it (unfinished, or written by an older c2ir)") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise DamagedFile("its content-hash file is unreadable") from None
    if not path.is_file():
        raise DamagedFile("the file is missing")
    if path.stat().st_size != size:
        raise DamagedFile(f"{path.stat().st_size} bytes, {size} were written (truncated?)")
    if file_sha256(path) != sha:
        raise DamagedFile("its bytes do not match their content hash (modified or corrupted)")


def save_verified(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file plus its content-hash sidecar (`load_verified` checks both)."""
    _write_verified(path, lambda p: atomic_save_tensors(p, tensors, metadata))


def load_verified(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file written by `save_verified`; DamagedFile when it is missing, has no
    sidecar, or its size, content hash or format is not what was written."""
    _check_verified(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise DamagedFile(f"not a safetensors file ({type(exc).__name__})") from None


def write_verified_bytes(path: Path, data: bytes) -> None:
    """Bytes plus their content-hash sidecar (`read_verified_bytes` checks both)."""
    _write_verified(path, lambda p: atomic_write_bytes(p, data))


def read_verified_bytes(path: Path) -> bytes:
    """The bytes written by `write_verified_bytes`; DamagedFile otherwise."""
    _check_verified(path)
    return path.read_bytes()


def discard_verified(path: Path) -> None:
    """Remove a resumable file and its sidecar."""
    for f in (path, _sidecar(path)):
        with contextlib.suppress(OSError):
            f.unlink()


def _torchvision_version() -> str:
    """torchvision's own version string (e.g. 0.29.1+cu130), read from its version.py without importing the
    package: importing torchvision costs seconds per process."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text(errors="replace")
    hit = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return hit.group(1) if hit else "unknown"


def _distribution_version(name: str) -> str:
    """An installed distribution's version from its metadata, without importing it (importing scikit-learn
    costs about a second per process, more than some artifacts take to build)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def package_versions() -> dict[str, str]:
    """Versions recorded in every manifest, so a result can be traced to its software."""
    import numpy

    from c2ir.version import __version__

    return {
        "c2ir": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "numpy": numpy.__version__,
        "scikit-learn": _distribution_version("scikit-learn"),
    }


class FolderOutput:
    """Where a build writes an artifact on disk: its (temporary) folder. `out / name` is a path in it."""

    def __init__(self, path: Path):
        self.path = path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        atomic_save_tensors(self.path / name, tensors)

    def save_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def file(self, name: str) -> Path | None:
        """A path for a file of another kind (a PNG); None where the store keeps no files."""
        return self.path / name


@dataclass(frozen=True)
class Artifact:
    """A complete, published artifact directory."""

    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def digest(self) -> str:
        """Content digest of the artifact (its files' hashes): what downstream artifacts record as their input."""
        return hashlib.sha256(canonical_json(self.manifest.get("files", {})).encode()).hexdigest()[:KEY_LENGTH]

    def tensors(self, name: str = "tensors.safetensors", keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The tensors of a safetensors file; with `keys`, only those (read from the file, not the rest)."""
        if keys is None:
            return load_file(str(self.path / name))
        with safe_open(str(self.path / name), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def tensor_names(self, name: str = "tensors.safetensors") -> list[str]:
        with safe_open(str(self.path / name), framework="pt") as f:
            return list(f.keys())

    def json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def file(self, name: str) -> Path:
        return self.path / name


_FORMAT_OK: dict[tuple[str, str], str | None] = {}  # (suffix, content hash) -> format problem (None: valid), checked once per process
_SWEPT: set[str] = set()  # stage folders whose trash this process has removed


def _remove(path: Path) -> None:
    """Delete a folder tree or a file (whatever a discarded key turned out to be)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


class ArtifactStore:
    """Lookup, lock and atomic publish of stage artifacts under one root directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_dir(self, stage: str, key: str) -> Path:
        """Scratch space for resumable work (completed synthesis batches, training epochs)."""
        return self.root / stage / f"{key}.partial"

    def _stage_folder(self, stage: str) -> Path:
        """`<root>/<stage>/`, created; one line if something that is not a folder is in its place."""
        base = self.root / stage
        if base.exists() and not base.is_dir():
            raise C2IRError(f"cache folder {base} is a file, not a folder; move or delete it (it holds no c2ir "
                            "artifact) and run again")
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(base / "x", exc) from None
        return base

    def lookup(self, stage: str, key: str, inputs: Mapping[str, str] | None = None) -> Artifact | None:
        """Return the artifact if it is complete and verified; a broken one is moved aside and reported absent.

        `inputs` (upstream name -> content digest) must equal what the artifact was built from.
        """
        path = self.dir(stage, key)
        self.sweep_trash(stage)
        if not path.exists() and not path.is_symlink():
            return None
        problem, manifest = self._check(path)
        if problem is None and inputs is not None and manifest.get("inputs", {}) != dict(inputs):
            problem = ("it records no content digests of its inputs (written by an older c2ir)" if inputs and
                       not manifest.get("inputs") else
                       "it was built from different upstream artifacts (an upstream artifact was recomputed)")
        if problem is None:
            return Artifact(stage, key, path, manifest)
        log.warning("cache: %s/%s is damaged or stale (%s); discarding and recomputing it", stage, key, problem)
        self._discard(path)
        return None

    @staticmethod
    def _check(path: Path) -> tuple[str | None, dict[str, Any]]:
        """(problem or None, manifest): the manifest lists every file of the folder (and only those, none
        outside it), each present with the recorded size, content hash and a readable format."""
        manifest_path = path / MANIFEST
        if not path.is_dir():
            return "it is not a folder", {}
        if not manifest_path.is_file():
            return "manifest.json is missing", {}
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "manifest.json is unreadable", {}
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not all(isinstance(m, dict) for m in files.values()):
            return "manifest.json is not a c2ir manifest (no file table)", {}
        if not files:
            return "manifest.json lists no files", {}
        for name in files:
            problem = manifest_path_problem(name)
            if problem:
                return problem, {}
        on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*")
                   if (p.is_file() or p.is_symlink()) and p != manifest_path}
        unlisted = sorted(on_disk - set(files))
        if unlisted:
            return f"{escape_name(unlisted[0])} is not listed in manifest.json ({len(unlisted)} unlisted file(s))", {}
        for name, meta in files.items():
            f = path / name
            if f.is_symlink():
                return f"{escape_name(name)} is a symbolic link", {}
            if not f.is_file():
                return f"{escape_name(name)} is missing", {}
            if f.stat().st_size != meta.get("size"):
                return f"{name} has {f.stat().st_size} bytes, manifest says {meta.get('size')} (truncated?)", {}
            if "sha256" not in meta:
                return f"{name} has no content hash in the manifest (written by an older c2ir)", {}
            if cached_file_hash(f) != meta["sha256"]:
                return f"{name} does not match its content hash (modified or corrupted)", {}
            checked = (f.suffix, meta["sha256"])
            if checked not in _FORMAT_OK:
                _FORMAT_OK[checked] = format_problem(f)
            problem = _FORMAT_OK[checked]
            if problem:
                return problem, {}
        return None, manifest

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            os.rename(path, trash)
            _remove(trash)

    def sweep_trash(self, stage: str) -> None:
        """Remove `.trash-*` of any key in a stage folder, once per process: a discarded artifact is
        renamed there and deleted at once, so what is left was interrupted (nobody reads trash)."""
        base = self.root / stage
        if (str(base) in _SWEPT) or not base.is_dir():
            return
        _SWEPT.add(str(base))
        for left in base.glob(".trash-*"):
            log.info("cache: removing %s/%s left by an interrupted discard", stage, left.name)
            _remove(left)

    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive per-key lock, so concurrent jobs compute a key once and the others wait."""
        lock_path = self.root / stage / f".{key}.lock"
        self._stage_folder(stage)
        with open(lock_path, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("cache: %s/%s is being computed by another process; waiting", stage, key)
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def publish(
        self,
        stage: str,
        key: str,
        build: Callable[[FolderOutput], Mapping[str, Any] | None],
        *,
        config: Mapping[str, Any],
        upstream: Mapping[str, str] | None = None,
        seed: int | None = None,
        inputs: Mapping[str, str] | None = None,
    ) -> Artifact:
        """Build an artifact in a temporary directory, write its manifest last, rename it into place."""
        final = self.dir(stage, key)
        tmp = final.with_name(f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise write_failure(tmp, exc) from None
        started = time.time()
        try:
            extra = dict(build(FolderOutput(tmp)) or {})
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "stage": stage,
                "key": key,
                "config": config,
                "upstream": dict(upstream or {}),
                "inputs": dict(inputs or {}),
                "seed": seed,
                "versions": package_versions(),
                "threads": torch.get_num_threads(),  # results can differ in the last bits across thread counts
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - started, 3),
                "files": files,
                **extra,
            }
            atomic_write_json(tmp / MANIFEST, manifest)
            if final.exists():  # a concurrent writer without the lock won; keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        artifact = self.lookup(stage, key, inputs)
        assert artifact is not None, f"published artifact {final} failed its own check"
        return artifact

    def get_or_create(self, stage: str, key: str, build: Callable[[FolderOutput], Mapping[str, Any] | None],
                      **manifest: Any) -> Artifact:
        """Return the cached artifact, or build and publish it (once, under the key's lock).

        `manifest` takes `publish`'s keywords (config, upstream, seed, inputs).
        """
        inputs = manifest.get("inputs")
        found = self.lookup(stage, key, inputs)
        if found is not None:
            log.info("cache hit: %s/%s", stage, key)
            return found
        with self.lock(stage, key):
            found = self.lookup(stage, key, inputs)  # another process may have finished it while we waited
            if found is not None:
                log.info("cache hit: %s/%s (computed by another process)", stage, key)
                return found
            self.remove_leftovers(stage, key)
            log.info("cache miss: computing %s/%s", stage, key)
            return self.publish(stage, key, build, **manifest)

    @contextlib.contextmanager
    def resumable(self, stage: str, key: str) -> Iterator[Path]:
        """The key's partial folder for resumable work (created by the caller when it saves something);
        on the way out it is removed if it holds nothing, so a failed build leaves no empty folder."""
        work = self.partial_dir(stage, key)
        try:
            yield work
        finally:
            with contextlib.suppress(OSError):
                work.rmdir()  # only succeeds when empty: finished batches and epochs are kept for resuming

    def remove_leftovers(self, stage: str, key: str) -> None:
        """Delete what killed builders of this key left behind. Call only under the key's lock.

        Every builder of a key holds its lock while its `.tmp-<key>-*` folder exists, so
        under the lock such folders (and `.trash-<key>-*` from an interrupted discard)
        have no living owner. An empty `<key>.partial/` holds no resumable work either.
        """
        base = self.root / stage
        for pattern in (f".tmp-{key}-*", f".trash-{key}-*"):
            for left in base.glob(pattern):
                log.info("cache: removing %s left by an interrupted run", left.name)
                _remove(left)
        partial = self.partial_dir(stage, key)
        if partial.is_dir() and not any(partial.iterdir()):
            with contextlib.suppress(OSError):
                partial.rmdir()


class MemoryOutput:
    """Where a build writes an artifact in memory: named tensor dicts and JSON values."""

    def __init__(self) -> None:
        self.tensor_files: dict[str, dict[str, torch.Tensor]] = {}
        self.json_files: dict[str, Any] = {}

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensor_files[name] = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def save_json(self, name: str, obj: Any) -> None:
        self.json_files[name] = json.loads(json.dumps(obj, default=str))  # the values a file would give back

    def file(self, name: str) -> Path | None:
        return None


@dataclass(frozen=True)
class MemoryArtifact:
    """An artifact of a `MemoryStore`: what its build saved, read back by the same names as from disk."""

    stage: str
    key: str
    manifest: dict[str, Any]
    out: MemoryOutput
    path: None = None

    @property
    def digest(self) -> str:
        return f"memory:{self.key}"  # nothing in memory is damaged or edited behind the store's back

    def tensors(self, name: str = "tensors.safetensors", keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        stored = self.out.tensor_files[name]
        return dict(stored) if keys is None else {k: stored[k] for k in keys}

    def tensor_names(self, name: str = "tensors.safetensors") -> list[str]:
        return list(self.out.tensor_files[name])

    def json(self, name: str) -> Any:
        return self.out.json_files[name]

    def file(self, name: str) -> Path | None:
        return None


class MemoryStore:
    """The store of the Python API: artifacts live as long as the store (one per detector, or shared
    between detectors to reuse one synthesis); nothing is written to disk."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], MemoryArtifact] = {}

    def partial_dir(self, stage: str, key: str) -> Path | None:
        return None  # no resumable work in memory

    @contextlib.contextmanager
    def resumable(self, stage: str, key: str) -> Iterator[None]:
        yield None  # no partial folder: a build in memory keeps its parts itself

    def lookup(self, stage: str, key: str, inputs: Mapping[str, str] | None = None) -> MemoryArtifact | None:
        art = self._items.get((stage, key))
        if art is not None and inputs is not None and art.manifest.get("inputs", {}) != dict(inputs):
            return None
        return art

    def get_or_create(self, stage: str, key: str, build: Callable[[MemoryOutput], Mapping[str, Any] | None], *,
                      config: Mapping[str, Any], upstream: Mapping[str, str] | None = None, seed: int | None = None,
                      inputs: Mapping[str, str] | None = None) -> MemoryArtifact:
        found = self.lookup(stage, key, inputs)
        if found is not None:
            return found
        out = MemoryOutput()
        extra = dict(build(out) or {})
        manifest = {"stage": stage, "key": key, "config": config, "upstream": dict(upstream or {}),
                    "inputs": dict(inputs or {}), "seed": seed, **extra}
        art = MemoryArtifact(stage, key, manifest, out)
        self._items[(stage, key)] = art
        return art
