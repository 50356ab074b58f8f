"""Bundle signing key rotation, hub side: tell every device to trust the new key.

A device trusts exactly one bundle key and reports its id in ``AgentState.bundle_key_id``
(ingest keeps it in ``Device.state["bundleKeyId"]``). After
:func:`hub.security.keys.rotate_bundle_key`
the :class:`KeyRotationSender` sends each device still behind a ``RotateKey`` command for the
current key, signed by the key that device trusts (a retired key the hub keeps), so a device
that missed several rotations catches up in one step:

- a device that reports a retired key id: signed with that key;
- a device that never reported one (an older agent, or not connected yet): signed with the
  key retired last, once per hub process (the device says "already trusted" if it was
  enrolled with the current key);
- a device that reports a key this hub never had: nothing can be sent (logged).

One command per device per hub process while it stays offline (the broker keeps it in the
device's persistent session), one more each time it comes back online, and at most one per
``resend_s`` while it stays online and behind. A device that has rotated reports the new id
and is left alone. Until then it refuses bundles signed with the new key (its deploys fail
with a signature reason, which the rollout gates count as failures).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.core.service import Periodic, ServiceHealth
from hub.security import keys
from hub.tables import Device
from model_packager.signing import (
    Ed25519PrivateKey,
    key_id,
    load_or_create_private_key,
    public_key_bytes,
    public_key_pem,
    rotation_message,
)
from proto import messages_pb2 as pb

log = logging.getLogger("edgeloop.keys")

STATE_KEY = "bundleKeyId"  # AgentState.bundle_key_id as ingest stores it (protobuf JSON)


class Publisher(Protocol):
    def publish(self, command: pb.Command) -> None: ...


def rotate_command(
    *,
    device_id: str,
    signer: Ed25519PrivateKey,
    new_public_key: bytes,
    issued_at: int | None = None,
    command_id: str | None = None,
) -> pb.Command:
    """A ``RotateKey`` command for one device, signed by ``signer`` (the key it trusts)."""
    cid = command_id or f"rotate-{uuid.uuid4().hex}"
    at = int(time.time() * 1000) if issued_at is None else issued_at
    message = rotation_message(
        command_id=cid, device_id=device_id, issued_at=at, new_key=new_public_key
    )
    return pb.Command(
        command_id=cid,
        device_id=device_id,
        issued_at=at,
        rotate_key=pb.RotateKey(
            new_public_key=new_public_key,
            new_key_id=key_id(new_public_key),
            signer_key_id=key_id(signer),
            signature=signer.sign(message),
        ),
    )


def reported_key_id(device: Device) -> str:
    """The bundle key id the device last reported ("" when it never did)."""
    return str((device.state or {}).get(STATE_KEY, "") or "")


def key_status(engine: Engine, data_dir: Path) -> dict[str, Any]:
    """Current key id, retired key ids, and which key each device reports trusting."""
    current = key_id(_current(data_dir))
    retired = keys.retired_key_ids(data_dir)
    with Session(engine) as session:
        devices = session.exec(select(Device).order_by(col(Device.id))).all()
    per_device = {}
    counts = {"current": 0, "behind": 0, "unknown": 0}
    for device in devices:
        reported = reported_key_id(device)
        status = "current" if reported == current else ("behind" if reported else "unknown")
        counts[status] += 1
        per_device[device.id] = {"key_id": reported, "status": status, "online": device.online}
    return {"key_id": current, "retired": retired, "devices": per_device, "counts": counts}


def current_public_key(data_dir: Path) -> tuple[str, str]:
    """The current signing key's id and its public key as PEM."""
    private = _current(data_dir)
    return key_id(private), public_key_pem(private).decode()


def _current(data_dir: Path) -> Ed25519PrivateKey:
    return load_or_create_private_key(keys.bundle_signing_key_path(data_dir))


@dataclass
class _Sent:
    target: tuple[str, str]  # (signer key id, new key id)
    at: float
    online: bool


class KeyRotationSender(Periodic):
    """Sends ``RotateKey`` to devices that trust a retired key; :meth:`tick` once, or
    ``start()``/``stop()`` to tick on a thread (``nudge()`` ticks now); a Service."""

    name = "key-rotation"

    def __init__(
        self,
        *,
        engine: Engine,
        data_dir: Path,
        publisher: Publisher,
        tick_s: float = 5.0,
        resend_s: float = 60.0,
    ) -> None:
        # a broker or database hiccup is logged and tried again at the next tick
        super().__init__(
            interval_s=tick_s, log=log, thread_name="key-rotation", what="key rotation tick"
        )
        self.engine, self.data_dir, self.publisher = engine, data_dir, publisher
        self.tick_s, self.resend_s = tick_s, resend_s
        self._sent: dict[str, _Sent] = {}
        self._unknown_logged: set[tuple[str, str]] = set()
        self.sent = 0

    def tick(self) -> int:
        """Send what is due now; returns how many commands were published."""
        retired = keys.retired_key_ids(self.data_dir)
        if not retired:
            return 0
        current = _current(self.data_dir)
        current_id, new_public = key_id(current), public_key_bytes(current)
        with Session(self.engine) as session:
            devices = session.exec(select(Device).order_by(col(Device.id))).all()
        now, published = time.monotonic(), 0
        for device in devices:
            reported = reported_key_id(device)
            if reported == current_id:
                self._sent.pop(device.id, None)
                continue
            signer_id = reported if reported in retired else ("" if reported else retired[-1])
            if not signer_id:
                if (device.id, reported) not in self._unknown_logged:
                    self._unknown_logged.add((device.id, reported))
                    log.warning(
                        "device %s trusts key %s, which this hub never had: it cannot be "
                        "told about %s (re-enrol it)",
                        device.id,
                        reported,
                        current_id,
                    )
                continue
            target = (signer_id, current_id)
            last = self._sent.get(device.id)
            if last is not None and last.target == target:
                # again only to a device that reports the old key while online: it came
                # back, or it is still behind resend_s after the last one
                again = (
                    reported != ""
                    and device.online
                    and (not last.online or now - last.at >= self.resend_s)
                )
                last.online = device.online
                if not again:
                    continue
            signer = keys.retired_key(self.data_dir, signer_id)
            if signer is None:  # pragma: no cover - listed a moment ago
                continue
            self.publisher.publish(
                rotate_command(device_id=device.id, signer=signer, new_public_key=new_public)
            )
            self._sent[device.id] = _Sent(target=target, at=now, online=device.online)
            published += 1
        self.sent += published
        return published

    # thread -------------------------------------------------------------------------------

    @property
    def errors(self) -> int:
        return self.failures

    def nudge(self) -> None:
        """Run the next tick now (a key was just rotated)."""
        self.wake()

    def health(self) -> ServiceHealth:
        return {**super().health(), "commands_sent": self.sent}
