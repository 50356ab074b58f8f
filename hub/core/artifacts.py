"""Artifact storage behind one small interface, chosen by URI scheme.

``file://DIR`` is a content-addressed folder: every blob lives at
``DIR/sha256/<2 hex>/<64 hex>`` and its URI is ``file://.../sha256/..``. Writing the
same bytes twice stores them once. ``s3://BUCKET/PREFIX?endpoint_url=...`` is the
S3-compatible store (:mod:`hub.core.s3`, boto3; loaded only when such a URL is opened), laid
out the same way under its prefix, and can sign short-lived download URLs for devices.

``hub serve`` calls :meth:`ArtifactStore.check` before it starts anything else: a missing
bucket, wrong credentials or an unreachable endpoint stop it at once with
:class:`ArtifactStoreUnavailable`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from hub.core.artifact_types import (
    CHUNK,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStoreUnavailable,
    ArtifactUrlInvalid,
    hex_of,
    sha256_digest,
)
from hub.core.errors import EdgeloopError
from hub.core.redact import redact_url

log = logging.getLogger("edgeloop.artifacts")
__all__ = [
    "CHUNK",
    "STORE_FACTORIES",
    "ArtifactCorrupt",
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactStoreUnavailable",
    "ArtifactUrlInvalid",
    "DownloadLinks",
    "FileArtifactStore",
    "hex_of",
    "open_store",
    "sha256_digest",
]


class ArtifactStore(Protocol):
    """What the hub needs from artifact storage."""

    def put_bytes(self, data: bytes) -> ArtifactRef: ...

    def put_file(self, path: Path) -> ArtifactRef: ...

    def get_bytes(self, digest: str) -> bytes: ...

    def open(self, digest: str) -> BinaryIO: ...

    def stat(self, digest: str) -> ArtifactRef: ...

    def exists(self, digest: str) -> bool: ...

    def check(self) -> None:
        """Raise :class:`ArtifactStoreUnavailable` unless blobs can be stored and read."""
        ...

    def presigned_url(self, digest: str, *, ttl_s: int) -> str | None:
        """A URL that serves the blob without credentials for ``ttl_s`` seconds; None when
        the store has no such URLs (a local folder)."""
        ...


class FileArtifactStore:
    """Content-addressed folder on the local disk."""

    def __init__(self, *, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        value = hex_of(digest)
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

    def check(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise ArtifactStoreUnavailable(f"artifact folder {self.root} is not writable")

    def presigned_url(self, digest: str, *, ttl_s: int) -> str | None:
        return None


class DownloadLinks:
    """Presigned download URLs for bundle digests, ``(url, expires_at_ms)``, as deploy
    commands carry them (a :data:`hub.rollouts.controller.BundleLinks`).

    A URL is reused while more than half its ``ttl_s`` is left (one signature per bundle
    and half-TTL, not one per device); every device gets at least ``ttl_s / 2`` seconds. A
    store that cannot sign (a folder, an outage) gives None: devices fetch over gRPC.
    """

    def __init__(
        self, store: ArtifactStore, *, ttl_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.store, self.ttl_s, self.clock = store, ttl_s, clock
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.failures = 0

    def __call__(self, digest: str) -> tuple[str, int] | None:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[1] - now > self.ttl_s / 2:
                return cached[0], int(cached[1] * 1000)
        try:
            url = self.store.presigned_url(digest, ttl_s=self.ttl_s)
        except (EdgeloopError, OSError) as exc:
            self.failures += 1
            log.warning("no presigned URL for %s (devices use gRPC): %s", digest, exc)
            return None
        if url is None:
            return None
        expires = now + self.ttl_s - 1  # a second's margin for the signing clock
        with self._lock:
            self._cache[digest] = (url, expires)
        return url, int(expires * 1000)


def _file_store(url: str) -> ArtifactStore:
    parsed = urlparse(url)
    return FileArtifactStore(root=Path(unquote(parsed.path)))


def _s3_store(url: str) -> ArtifactStore:
    try:
        from hub.core.s3 import s3_store  # boto3: loaded only for an s3:// store
    except ImportError as exc:  # pragma: no cover - boto3 comes with the hub extra
        raise ArtifactStoreUnavailable(
            f"the s3:// artifact store needs boto3 ({exc}); pip install 'edgeloop[hub]'"
        ) from None
    return s3_store(url)


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
        raise ArtifactUrlInvalid(
            f"artifact URL {redact_url(url)!r}: unknown scheme {scheme!r}; "
            f"known: {sorted(STORE_FACTORIES)}"
        ) from None
    return factory(url)
