"""The bundle signing key an agent trusts, and key rotation (``RotateKey`` commands).

The agent starts trusting the key it was configured with (``public_key``, e.g. ``hub.pub``
from enrolment). A ``RotateKey`` command replaces it only when its signature verifies with
the key trusted *now*, over ``rotation_message(command_id, device_id, issued_at, new key)``
for this very device, and only when it is newer than the last rotation accepted. The new key
is stored in ``<device dir>/trusted_key.json`` (temp file, fsync, rename, fsync of the
folder) before it is used; from then on only the new key verifies bundles.

At start the stored key wins over the configured one while the configured key is one it
replaced (the usual case: ``hub.pub`` still holds the key from enrolment). A configured key
that is neither the stored key nor one it replaced was provisioned on purpose (the device
was enrolled again, perhaps with another hub): it wins, and the stored rotation is ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from edge_agent.errors import RotationRefused
from model_packager.files import write_private
from model_packager.signing import (
    Ed25519PublicKey,
    KeyMaterialError,
    key_id,
    load_public_key,
    public_key_bytes,
    rotation_message,
)
from proto import messages_pb2 as pb

log = logging.getLogger("edgeloop.agent.trust")

__all__ = ["TRUSTED_KEY_FILE", "RotationRefused", "TrustedKey"]

TRUSTED_KEY_FILE = "trusted_key.json"


class TrustedKey:
    """The one key bundles must be signed with; see the module docstring."""

    def __init__(self, *, configured: Path | bytes, device_dir: Path, device_id: str) -> None:
        self._path = device_dir / TRUSTED_KEY_FILE
        self._device_id = device_id
        self.public_key: Ed25519PublicKey = load_public_key(configured)
        self.key_id = key_id(self.public_key)
        self._replaced: list[str] = []  # key ids this device has rotated away from
        self._issued_at = 0  # issued_at of the last rotation accepted
        self.rotations = 0
        self.refused = 0
        stored = self._read()
        if stored is not None:
            public, record = stored
            if self.key_id == key_id(public) or self.key_id in record["replaced"]:
                self.public_key, self.key_id = public, key_id(public)
                self._replaced = list(record["replaced"])
                self._issued_at = int(record["issued_at"])
            else:
                log.warning(
                    "the configured bundle key %s is not in the rotation stored in %s "
                    "(trusting %s): using the configured key",
                    self.key_id,
                    self._path,
                    key_id(public),
                )

    def _read(self) -> tuple[Ed25519PublicKey, dict[str, Any]] | None:
        try:
            record = json.loads(self._path.read_text())
            public = load_public_key(bytes.fromhex(record["public_key"]))
            if not isinstance(record["replaced"], list) or not isinstance(record["issued_at"], int):
                raise ValueError("bad fields")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, KeyMaterialError) as exc:
            log.error("ignoring a damaged %s: %s", self._path, exc)
            return None
        return public, record

    def rotate(self, command: pb.Command) -> bool:
        """Carry out a ``RotateKey``: True when the trusted key changed, False when the new
        key is already the trusted one; raises :class:`RotationRefused` (counted in
        ``refused``) when the command is not for this device, not signed by the trusted
        key, older than the last rotation, or names a key this device already left."""
        try:
            return self._rotate(command)
        except RotationRefused:
            self.refused += 1
            raise

    def _rotate(self, command: pb.Command) -> bool:
        body = command.rotate_key
        if command.device_id != self._device_id:
            raise RotationRefused(f"for device {command.device_id!r}, not this one")
        try:
            new = load_public_key(bytes(body.new_public_key))
        except KeyMaterialError as exc:
            raise RotationRefused(f"new key: {exc}") from None
        new_id = key_id(new)
        if body.new_key_id and body.new_key_id != new_id:
            raise RotationRefused(f"new_key_id {body.new_key_id} is not the key's ({new_id})")
        if new_id == self.key_id:
            return False
        if body.signer_key_id != self.key_id:
            raise RotationRefused(
                f"signed by {body.signer_key_id or 'an unnamed key'}; this device trusts "
                f"{self.key_id}"
            )
        message = rotation_message(
            command_id=command.command_id,
            device_id=self._device_id,
            issued_at=command.issued_at,
            new_key=public_key_bytes(new),
        )
        try:
            self.public_key.verify(bytes(body.signature), message)
        except InvalidSignature:
            raise RotationRefused(f"signature does not verify with {self.key_id}") from None
        if command.issued_at <= self._issued_at:
            raise RotationRefused(
                f"issued at {command.issued_at}, not after the last rotation ({self._issued_at})"
            )
        if new_id in self._replaced:
            raise RotationRefused(f"{new_id} is a key this device already rotated away from")
        replaced = [*self._replaced, self.key_id]
        self._store(
            {
                "public_key": public_key_bytes(new).hex(),
                "key_id": new_id,
                "replaced": replaced,
                "issued_at": int(command.issued_at),
                "command_id": command.command_id,
            }
        )
        log.warning("bundle signing key rotated: %s -> %s", self.key_id, new_id)
        self.public_key, self.key_id = new, new_id
        self._replaced, self._issued_at = replaced, int(command.issued_at)
        self.rotations += 1
        return True

    def _store(self, record: dict[str, Any]) -> None:
        write_private(self._path, json.dumps(record, sort_keys=True) + "\n")
