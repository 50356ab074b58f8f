"""Artifact storage behind one small interface, chosen by URI scheme.

``file://DIR`` is a content-addressed folder: every blob lives at
``DIR/sha256/<2 hex>/<64 hex>`` and its URI is ``file://.../sha256/..``. Writing the
same bytes twice stores them once. An S3-compatible store is the scale-out path: it
registers a factory for ``s3`` in :data:`STORE_FACTORIES` and implements the same protocol.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from hub.core.errors import EdgeloopError, NotFound

CHUNK = 1024 * 1024


class ArtifactNotFound(NotFound, LookupError):
    """No artifact with that digest or URI."""


class ArtifactCorrupt(EdgeloopError, OSError):
    """Stored bytes no longer match their digest."""

    code = "artifact_corrupt"
    status = 500


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """Where a blob lives and what it is."""

    uri: str
    digest: str  # "sha256:<hex>"
    size: int


class ArtifactStore(Protocol):
    """What the hub needs from artifact storage."""

    def put_bytes(self, data: bytes) -> ArtifactRef: ...

    def put_file(self, path: Path) -> ArtifactRef: ...

    def get_bytes(self, digest: str) -> bytes: ...

    def open(self, digest: str) -> BinaryIO: ...

    def stat(self, digest: str) -> ArtifactRef: ...

    def exists(self, digest: str) -> bool: ...


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ArtifactNotFound(f"not a sha256 digest: {digest!r}")
    return value


class FileArtifactStore:
    """Content-addressed folder on the local disk."""

    def __init__(self, *, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        value = _hex(digest)
        return self.root / "sha256" / value[:2] / value

    def _ref(self, digest: str, path: Path) -> ArtifactRef:
        return ArtifactRef(uri=path.as_uri(), digest=digest, size=path.stat().st_size)

    def put_bytes(self, data: bytes) -> ArtifactRef:
        digest = sha256_digest(data)
        path = self._path(digest)
        if not path.exists():
            self._write_atomically(path, [data])
        return self._ref(digest, path)

    def put_file(self, path: Path) -> ArtifactRef:
        hasher = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                hasher.update(block)
        digest = "sha256:" + hasher.hexdigest()
        target = self._path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                with path.open("rb") as src:
                    shutil.copyfileobj(src, tmp, CHUNK)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp.name, target)
        return self._ref(digest, target)

    def _write_atomically(self, path: Path, blocks: list[bytes]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            for block in blocks:
                tmp.write(block)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)

    def get_bytes(self, digest: str) -> bytes:
        with self.open(digest) as fh:
            data = fh.read()
        if sha256_digest(data) != digest:
            raise ArtifactCorrupt(f"artifact {digest} is corrupt on disk ({self._path(digest)})")
        return data

    def open(self, digest: str) -> BinaryIO:
        path = self._path(digest)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {digest} in {self.root}") from None

    def stat(self, digest: str) -> ArtifactRef:
        path = self._path(digest)
        if not path.exists():
            raise ArtifactNotFound(f"no artifact {digest} in {self.root}")
        return self._ref(digest, path)

    def exists(self, digest: str) -> bool:
        try:
            return self._path(digest).exists()
        except ArtifactNotFound:
            return False


def _file_store(url: str) -> ArtifactStore:
    parsed = urlparse(url)
    return FileArtifactStore(root=Path(unquote(parsed.path)))


def _s3_store(url: str) -> ArtifactStore:
    raise NotImplementedError(
        f"artifact URL {url!r}: the S3-compatible store is the scale-out path and is not built "
        "yet; use file:///path/to/folder"
    )


STORE_FACTORIES: dict[str, Callable[[str], ArtifactStore]] = {
    "file": _file_store,
    "s3": _s3_store,
}


def open_store(url: str) -> ArtifactStore:
    """The store for ``url``, chosen by its scheme."""
    scheme = urlparse(url).scheme
    try:
        factory = STORE_FACTORIES[scheme]
    except KeyError:
        raise ValueError(
            f"artifact URL {url!r}: unknown scheme {scheme!r}; known: {sorted(STORE_FACTORIES)}"
        ) from None
    return factory(url)
