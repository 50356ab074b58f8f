"""The artifact store's leaf types: refs, errors, digests (no backend; both stores import
this, so :mod:`hub.core.artifacts` can load :mod:`hub.core.s3` without an import cycle)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hub.core.errors import EdgeloopError, NotFound

__all__ = [
    "CHUNK",
    "ArtifactCorrupt",
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStoreUnavailable",
    "ArtifactUrlInvalid",
    "hex_of",
    "sha256_digest",
]

CHUNK = 1024 * 1024


class ArtifactNotFound(NotFound, LookupError):
    """No artifact with that digest or URI."""


class ArtifactCorrupt(EdgeloopError, OSError):
    """Stored bytes no longer match their digest."""

    code = "artifact_corrupt"
    status = 500


class ArtifactStoreUnavailable(EdgeloopError, OSError):
    """The store cannot be used: a missing bucket, refused credentials, no connection."""

    code = "artifact_store_unavailable"
    status = 503


class ArtifactUrlInvalid(EdgeloopError, ValueError):
    """An artifact URL that names no usable store (scheme, bucket, parameters)."""

    code = "artifact_url_invalid"
    status = 422


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """Where a blob lives and what it is."""

    uri: str
    digest: str  # "sha256:<hex>"
    size: int


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    """The 64 hex digits of a ``sha256:`` digest; :class:`ArtifactNotFound` otherwise."""
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ArtifactNotFound(f"not a sha256 digest: {digest!r}")
    return value
