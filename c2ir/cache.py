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

Two stores share one interface (`lookup`, `get_or_create`, `partial_dir`): `ArtifactStore`
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


# (path, size, mtime_ns, inode) -> hash: a file is hashed once per process while it is unchanged
_VERIFIED: dict[tuple[str, int, int, int], str] = {}


def cached_file_hash(path: Path) -> str:
    st = path.stat()
    ident = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if ident not in _VERIFIED:
        _VERIFIED[ident] = file_sha256(path)
    return _VERIFIED[ident]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed: checkpoints' identity and the manifest's content hash
    (SHA-256 through OpenSSL measured 1.7x faster than BLAKE2b here, docs/BENCHMARKS.md)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers never see it half-written (temp name, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """safetensors file written atomically; tensors are made contiguous CPU copies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


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


def package_versions() -> dict[str, str]:
    """Versions recorded in every manifest, so a result can be traced to its software."""
    import numpy
    import sklearn

    from c2ir.version import __version__

    return {
        "c2ir": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
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


class ArtifactStore:
    """Lookup, lock and atomic publish of stage artifacts under one root directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_dir(self, stage: str, key: str) -> Path:
        """Scratch space for resumable work (completed synthesis batches, training epochs)."""
        return self.root / stage / f"{key}.partial"

    def lookup(self, stage: str, key: str, inputs: Mapping[str, str] | None = None) -> Artifact | None:
        """Return the artifact if it is complete and verified; a broken one is moved aside and reported absent.

        `inputs` (upstream name -> content digest) must equal what the artifact was built from.
        """
        path = self.dir(stage, key)
        if not path.exists():
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
        """(problem or None, manifest): every file present with the recorded size and content hash."""
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return "manifest.json is missing", {}
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "manifest.json is unreadable", {}
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not all(isinstance(m, dict) for m in files.values()):
            return "manifest.json is not a c2ir manifest (no file table)", {}
        for name, meta in files.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing", {}
            if f.stat().st_size != meta.get("size"):
                return f"{name} has {f.stat().st_size} bytes, manifest says {meta.get('size')} (truncated?)", {}
            if "sha256" not in meta:
                return f"{name} has no content hash in the manifest (written by an older c2ir)", {}
            if cached_file_hash(f) != meta["sha256"]:
                return f"{name} does not match its content hash (modified or corrupted)", {}
        return None, manifest

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(OSError):
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive per-key lock, so concurrent jobs compute a key once and the others wait."""
        lock_path = self.root / stage / f".{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
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
        tmp.mkdir(parents=True)
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
                shutil.rmtree(left, ignore_errors=True)
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
