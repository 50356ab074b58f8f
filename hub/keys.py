"""The hub's bundle signing key: one Ed25519 key in ``<data dir>/keys/bundle_signing.pem``.

Created on first use (PEM PKCS#8, unencrypted, mode 0600, in a 0700 folder); a key file
that group or others may read is refused. Agents get the public half as raw 32 bytes
(``EnrollResponse.hub_public_key``) and verify every bundle against it.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.settings import HubSettings
from model_packager.signing import load_or_create_private_key, public_key_bytes

BUNDLE_SIGNING_KEY = Path("keys") / "bundle_signing.pem"


def bundle_signing_key_path(data_dir: Path) -> Path:
    """Where the bundle signing key of the hub at ``data_dir`` lives."""
    return data_dir / BUNDLE_SIGNING_KEY


def bundle_signing_key(settings: HubSettings) -> Ed25519PrivateKey:
    """The hub's private bundle signing key, created on first use."""
    return load_or_create_private_key(bundle_signing_key_path(settings.data_dir))


def bundle_public_key(settings: HubSettings) -> bytes:
    """The raw 32-byte public key that agents verify bundles with."""
    return public_key_bytes(bundle_signing_key(settings))
