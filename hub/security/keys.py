"""The hub's bundle signing keys: the current one and those it replaced (rotation).

The current key is ``<data dir>/keys/bundle_signing.pem``: Ed25519, created on first use
(PEM PKCS#8, unencrypted, mode 0600, in a 0700 folder); a key file that group or others may
read is refused. Agents get the public half as raw 32 bytes
(``EnrollResponse.hub_public_key``) and verify every bundle against it.

:func:`rotate_bundle_key` replaces the current key with a new one and keeps the old one as
``keys/retired/<16 hex of its key id>.pem``: the hub still needs it to sign the
``RotateKey`` command that tells a device (which trusts only the old key) to trust the new
one (see :mod:`hub.security.key_rotation`). Everything signed after a rotation is signed with the
new key, and new enrolments get the new key. :class:`BundleSignerCheck` refuses to roll out
a bundle signed with any other key than the current one (devices that rotated refuse it).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.core.artifacts import ArtifactNotFound, ArtifactStore
from hub.core.errors import BundleRejected, Conflict
from hub.core.settings import HubSettings
from model_packager.bundle import BundleError, signer_key_id
from model_packager.signing import (
    KeyMaterialError,
    generate_private_key,
    key_id,
    load_or_create_private_key,
    load_private_key,
    public_key_bytes,
    store_private_key,
)

BUNDLE_SIGNING_KEY = Path("keys") / "bundle_signing.pem"
RETIRED_KEYS = Path("keys") / "retired"


def bundle_signing_key_path(data_dir: Path) -> Path:
    """Where the bundle signing key of the hub at ``data_dir`` lives."""
    return data_dir / BUNDLE_SIGNING_KEY


def bundle_signing_key(settings: HubSettings) -> Ed25519PrivateKey:
    """The hub's private bundle signing key, created on first use."""
    return load_or_create_private_key(bundle_signing_key_path(settings.data_dir))


def bundle_public_key(settings: HubSettings) -> bytes:
    """The raw 32-byte public key that agents verify bundles with."""
    return public_key_bytes(bundle_signing_key(settings))


def retired_key_path(data_dir: Path, kid: str) -> Path:
    """Where the retired key named ``kid`` (``ed25519:<16 hex>``) is kept."""
    hex_part = kid.removeprefix("ed25519:")
    if len(hex_part) != 16 or not all(c in "0123456789abcdef" for c in hex_part):
        raise KeyMaterialError(f"{kid!r} is not a key id (ed25519:<16 lowercase hex>)")
    return data_dir / RETIRED_KEYS / f"{hex_part}.pem"


def retired_key(data_dir: Path, kid: str) -> Ed25519PrivateKey | None:
    """The retired private key named ``kid``, or None when this hub never had it."""
    try:
        path = retired_key_path(data_dir, kid)
    except KeyMaterialError:
        return None
    return load_private_key(path) if path.exists() else None


def retired_key_ids(data_dir: Path) -> list[str]:
    """Key ids of every retired key, oldest retirement first."""
    folder = data_dir / RETIRED_KEYS
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.pem"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [f"ed25519:{p.stem}" for p in files]


@dataclass(frozen=True, kw_only=True)
class Rotation:
    old_key_id: str
    new_key_id: str
    new_public_key: bytes


def rotate_bundle_key(data_dir: Path) -> Rotation:
    """Make a new current key; the old one moves to ``keys/retired/``.

    Crash-safe and serialised by a lock file: the old key is first stored (fsynced) under
    ``retired/``, then the new key replaces ``bundle_signing.pem`` atomically. A crash in
    between leaves the old key current (and also retired, which is harmless).
    """
    current_path = bundle_signing_key_path(data_dir)
    current_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(current_path.parent / ".rotate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        old = load_or_create_private_key(current_path)
        old_id = key_id(old)
        store_private_key(retired_key_path(data_dir, old_id), old)  # False: already there
        new = generate_private_key()
        store_private_key(current_path, new, replace=True)
    finally:
        os.close(lock_fd)  # releases the lock
    return Rotation(old_key_id=old_id, new_key_id=key_id(new), new_public_key=public_key_bytes(new))


@dataclass(frozen=True, kw_only=True)
class BundleSignerCheck:
    """Refuses a bundle that is not signed with the hub's current key (signed before a
    rotation, or elsewhere): every device that rotated would refuse it. A bundle missing
    from ``store`` is not judged here."""

    store: ArtifactStore
    current_key_id: str
    retired_key_ids: Sequence[str] = ()

    @classmethod
    def of_hub(cls, store: ArtifactStore, data_dir: Path) -> BundleSignerCheck:
        current = key_id(load_or_create_private_key(bundle_signing_key_path(data_dir)))
        return cls(store=store, current_key_id=current, retired_key_ids=retired_key_ids(data_dir))

    def require_current(self, *, digest: str, ref: str) -> None:
        """Raise :class:`Conflict` (409) unless bundle ``digest`` (of ``ref``, MODEL@VERSION)
        names the current key; :class:`BundleRejected` when it is no signed bundle."""
        try:
            with self.store.open(digest) as fh:
                signer = signer_key_id(fh)
        except ArtifactNotFound:
            return
        except BundleError as exc:
            raise BundleRejected(
                f"bundle {digest} is not a signed edgeloop bundle ({exc}); devices refuse it — "
                f"re-package it: edgeloop package {ref}"
            ) from None
        if signer == self.current_key_id:
            return
        retired = signer in self.retired_key_ids
        why = (
            " which was retired on rotation; devices that rotated refuse it"
            if retired
            else f", not with this hub's key {self.current_key_id}; devices refuse it"
        )
        raise Conflict(
            f"bundle {digest} is signed with key {signer}{why} — "
            f"re-package it: edgeloop package {ref}",
            details={
                "bundle_digest": digest,
                "key_id": signer,
                "current_key_id": self.current_key_id,
                "retired_key": retired,
            },
        )
