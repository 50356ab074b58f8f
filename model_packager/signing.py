"""Ed25519 keys for bundle signatures: create, store, load and name them.

The hub holds one private key (PEM, PKCS#8, unencrypted, mode 0600) and signs every
bundle's ``manifest.json`` with it. Agents only ever see the public key: the raw 32 bytes
(``EnrollResponse.hub_public_key``), a PEM ``PUBLIC KEY`` block, or either in a file (raw
bytes may also be written as 64 hex or 44 base64 characters). A key is named by its
:func:`key_id`, ``ed25519:`` plus the first 16 hex digits of the SHA-256 of the raw key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from model_packager.errors import PackagerError
from model_packager.files import fsync_dir

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "InsecureKeyFileError",
    "KeyMaterialError",
    "generate_private_key",
    "key_id",
    "load_or_create_private_key",
    "load_private_key",
    "load_public_key",
    "public_key_bytes",
    "public_key_pem",
    "rotation_message",
    "store_private_key",
]

RAW_KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 64 * 1024
ROTATION_DOMAIN = b"edgeloop.rotate-key/1"


class KeyMaterialError(PackagerError, ValueError):
    """Key bytes or a key file that are not a usable Ed25519 key; the message says why."""


class InsecureKeyFileError(KeyMaterialError):
    """A private key file that group or others may access."""


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key (of a private key: its public half)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key as a PEM ``PUBLIC KEY`` block (SubjectPublicKeyInfo)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> str:
    """``ed25519:`` + the first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public if isinstance(public, bytes) else public_key_bytes(public)
    if len(raw) != RAW_KEY_BYTES:
        raise KeyMaterialError(f"a raw Ed25519 public key is 32 bytes, got {len(raw)}")
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: Path, *, private: bool) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyMaterialError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read key file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise KeyMaterialError(f"key file {path} is not a regular file")
    if private and os.name == "posix" and info.st_mode & 0o077:
        raise InsecureKeyFileError(
            f"private key file {path} is accessible by group/others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    if info.st_size > MAX_KEY_FILE_BYTES:
        raise KeyMaterialError(f"key file {path} is {info.st_size} bytes: too large for a key")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read key file {path}: {exc.strerror}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 private key; refuses files others may read."""
    data = _read_key_file(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted
        raise KeyMaterialError(
            f"private key {path} is encrypted; edgeloop needs it unencrypted"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def store_private_key(path: Path, key: Ed25519PrivateKey, *, replace: bool = False) -> bool:
    """Write ``key`` to ``path`` as PEM PKCS#8 (0600, in a 0700 folder), atomically: a temp
    file, fsynced, then linked (``replace=False``: never over an existing file; returns
    False when one is there) or renamed over ``path`` (``replace=True``); then the folder
    is fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system
                if path.exists():
                    return False
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the key at ``path``, or create it there (0600, atomically) when there is none.

    Two processes racing to create the key end up with the same one: the file appears
    with a hard link, which never replaces a key another process already wrote.
    """
    if path.exists():
        return load_private_key(path)
    key = generate_private_key()
    if not store_private_key(path, key):
        return load_private_key(path)  # another process created it first: use theirs
    return key


def _from_raw(raw: bytes, *, source: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyMaterialError(f"{source} is not a valid Ed25519 public key: {exc}") from exc


def _parse_public(data: bytes, *, source: str) -> Ed25519PublicKey:
    if len(data) == RAW_KEY_BYTES:
        return _from_raw(data, source=source)
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        if b"PRIVATE KEY" in text.split(b"\n", 1)[0]:
            raise KeyMaterialError(
                f"{source} holds a private key; give the public key instead "
                "(model_packager.public_key_pem or the raw 32 bytes)"
            )
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyMaterialError(f"{source} is not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyMaterialError(f"{source} holds a {type(key).__name__}, not an Ed25519 key")
        return key
    if len(text) == 2 * RAW_KEY_BYTES:
        with contextlib.suppress(ValueError):
            return _from_raw(bytes.fromhex(text.decode("ascii")), source=source)
    for altchars in (b"+/", b"-_"):
        try:
            raw = base64.b64decode(text, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == RAW_KEY_BYTES:
            return _from_raw(raw, source=source)
    raise KeyMaterialError(
        f"{source} is not an Ed25519 public key: expected the raw 32 bytes, a PEM "
        "PUBLIC KEY block, or the raw key as 64 hex / 44 base64 characters"
    )


def load_public_key(data: bytes | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from raw bytes, PEM, hex or base64 text, or a file of either."""
    if isinstance(data, Path):
        return _parse_public(_read_key_file(data, private=False), source=f"key file {data}")
    return _parse_public(bytes(data), source="the public key bytes")


def rotation_message(*, command_id: str, device_id: str, issued_at: int, new_key: bytes) -> bytes:
    """The bytes a ``RotateKey`` command's signature covers.

    ``edgeloop.rotate-key/1``, then command id, device id, ``issued_at`` (decimal unix ms)
    and the new raw 32-byte key, each as a 4-byte big-endian length and its bytes: one
    encoding per input, so a signature binds exactly this device, command and key.
    """
    if len(new_key) != RAW_KEY_BYTES:
        raise KeyMaterialError(f"a raw Ed25519 public key is 32 bytes, got {len(new_key)}")
    parts = (
        ROTATION_DOMAIN,
        command_id.encode(),
        device_id.encode(),
        str(int(issued_at)).encode(),
        bytes(new_key),
    )
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)
