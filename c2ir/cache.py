"""Artifact store: content-addressed stage outputs that later stages and reruns resume from.

Layout: `<root>/<stage>/<key>/` holds the artifact's files and a `manifest.json`
written last. The key hashes exactly the config a stage depends on plus the keys
of its upstream artifacts, so changing `ipm` re-runs only evaluate while changing
`synth.*` re-runs synthesis and everything downstream.

Crash safety: an artifact is built in a private temporary directory and published
with one `os.rename`, so a reader sees either nothing or a complete artifact. A
per-key file lock (`fcntl.flock`) makes concurrent processes that need the same
key wait for the first one instead of computing it twice. An artifact whose
manifest is missing or whose files do not match the sizes recorded there is
treated as absent (with a warning) and recomputed.
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


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (checkpoints can be large)."""
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


def package_versions() -> dict[str, str]:
    """Versions recorded in every manifest, so a result can be traced to its software."""
    import numpy
    import sklearn
    import torchvision

    import c2ir

    return {
        "c2ir": c2ir.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }


@dataclass(frozen=True)
class Artifact:
    """A complete, published artifact directory."""

    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    def tensors(self, name: str = "tensors.safetensors") -> dict[str, torch.Tensor]:
        return load_file(str(self.path / name))

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

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """Return the artifact if it is complete; a broken one is moved aside and reported absent."""
        path = self.dir(stage, key)
        if not path.exists():
            return None
        problem = self._check(path)
        if problem is None:
            return Artifact(stage, key, path, json.loads((path / MANIFEST).read_text()))
        log.warning("cache: %s/%s is incomplete (%s); recomputing it", stage, key, problem)
        self._discard(path)
        return None

    @staticmethod
    def _check(path: Path) -> str | None:
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return "manifest.json is missing"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return "manifest.json is unreadable"
        for name, meta in manifest.get("files", {}).items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != meta["size"]:
                return f"{name} has {f.stat().st_size} bytes, manifest says {meta['size']} (truncated?)"
        return None

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
        build: Callable[[Path], Mapping[str, Any] | None],
        *,
        config: Mapping[str, Any],
        upstream: Mapping[str, str] | None = None,
        seed: int | None = None,
    ) -> Artifact:
        """Build an artifact in a temporary directory, write its manifest last, rename it into place."""
        final = self.dir(stage, key)
        tmp = final.with_name(f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        started = time.time()
        try:
            extra = dict(build(tmp) or {})
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "stage": stage,
                "key": key,
                "config": config,
                "upstream": dict(upstream or {}),
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
        artifact = self.lookup(stage, key)
        assert artifact is not None, f"published artifact {final} failed its own check"
        return artifact

    def get_or_create(self, stage: str, key: str, build: Callable[[Path], Mapping[str, Any] | None],
                      **manifest: Any) -> Artifact:
        """Return the cached artifact, or build and publish it (once, under the key's lock).

        `manifest` takes `publish`'s keywords (config, upstream, seed).
        """
        found = self.lookup(stage, key)
        if found is not None:
            log.info("cache hit: %s/%s", stage, key)
            return found
        with self.lock(stage, key):
            found = self.lookup(stage, key)  # another process may have finished it while we waited
            if found is not None:
                log.info("cache hit: %s/%s (computed by another process)", stage, key)
                return found
            log.info("cache miss: computing %s/%s", stage, key)
            return self.publish(stage, key, build, **manifest)
