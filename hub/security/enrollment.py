"""Device enrolment: tokens that admit devices, per-device MQTT credentials, revocation.

One path for both ways in: the gRPC ``DeviceService.Enroll`` (a device presents an
enrolment token) and ``POST /api/v1/devices/{id}/enroll`` (an admin enrols a device; no
token). Either creates or updates the ``device`` row (group, tags, capabilities), issues a
fresh MQTT password (shown once; only its hash is stored, re-enrolment rotates it) and
returns the hub's bundle public key and the endpoints. The caller commits and then asks
:class:`hub.mqtt.auth.BrokerAuth` to regenerate the broker's files.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlunparse

from sqlalchemy import update
from sqlmodel import Session, col, select

from hub.core.clock import aware, utcnow
from hub.core.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from hub.security.passwords import HUB_CLIENT_ID_PREFIX, hash_password, new_password
from hub.tables import (
    Device,
    DeviceCertificate,
    DeviceCredential,
    EnrollmentToken,
    EnrollmentTokenCreate,
)
from hub.tables.devices import DEVICE_ID_PATTERN
from proto.topics import validate_device_id

if TYPE_CHECKING:
    from hub.security.client_certs import DeviceCA, Issued

TOKEN_PREFIX = "elt_"


class EnrollmentRefused(Forbidden):
    """A valid enrolment token that may not be used (any more): expired, used up, revoked."""

    code = "enrollment_refused"


@dataclass(frozen=True, kw_only=True)
class DeviceEndpoints:
    """What an enrolled device is told: where the broker and the artifact service are."""

    mqtt_url: str
    artifact_endpoint: str
    hub_public_key: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class EnrollResult:
    device_id: str
    mqtt_username: str
    mqtt_password: str = field(repr=False)
    hub_public_key: bytes = field(repr=False)
    mqtt_url: str
    artifact_endpoint: str
    created: bool
    rotated: bool
    client_certificate: bytes = b""
    client_ca: bytes = b""

    def public(self) -> dict[str, object]:
        """The API/CLI answer (the password is in it: it is shown this once)."""
        return {
            "device_id": self.device_id,
            "mqtt_username": self.mqtt_username,
            "mqtt_password": self.mqtt_password,
            "hub_public_key": self.hub_public_key.hex(),
            "mqtt_url": self.mqtt_url,
            "artifact_endpoint": self.artifact_endpoint,
            "created": self.created,
            "rotated": self.rotated,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def strip_credentials(url: str) -> str:
    parsed = urlparse(url)
    # (the query may name the hub's own CA path, meaningless on a device)
    return urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[-1], query=""))


# Tokens --------------------------------------------------------------------------------


def create_enrollment_token(
    session: Session, *, spec: EnrollmentTokenCreate
) -> tuple[EnrollmentToken, str]:
    """A new token row and the token itself (returned once, stored as a hash)."""
    for key in spec.tags:
        if not key:
            raise InvalidInput("tag keys must not be empty")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = EnrollmentToken(
        token_hash=token_hash(token),
        name=spec.name,
        group=spec.group,
        tags=dict(spec.tags),
        max_uses=spec.max_uses,
        expires_at=utcnow() + timedelta(seconds=spec.expires_in_s),
    )
    session.add(row)
    session.flush()
    return row, token


def list_enrollment_tokens(session: Session) -> list[EnrollmentToken]:
    return list(session.exec(select(EnrollmentToken).order_by(col(EnrollmentToken.id))).all())


def revoke_enrollment_token(session: Session, *, token_id: int) -> EnrollmentToken:
    row = session.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFound(f"no enrollment token {token_id}")
    row.revoked_at = row.revoked_at or utcnow()
    session.add(row)
    session.flush()
    return row


def _claim(session: Session, *, token: str) -> EnrollmentToken:
    """Check the token and count one use atomically (no over-use under concurrency)."""
    row = session.exec(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash(token))
    ).first()
    if row is None:
        raise Unauthorized("unknown enrollment token (ask the hub admin for a new one)")
    now = utcnow()
    if row.revoked_at is not None:
        raise EnrollmentRefused(f"enrollment token {row.id} was revoked")
    if aware(row.expires_at) <= now:
        raise EnrollmentRefused(
            f"enrollment token {row.id} expired at {aware(row.expires_at).isoformat()}"
        )
    claimed = session.execute(
        update(EnrollmentToken)
        .where(col(EnrollmentToken.id) == row.id)
        .where(col(EnrollmentToken.uses) < col(EnrollmentToken.max_uses))
        .values(uses=col(EnrollmentToken.uses) + 1)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise EnrollmentRefused(
            f"enrollment token {row.id} is used up ({row.max_uses} of {row.max_uses} uses)"
        )
    session.refresh(row)
    return row


# Enrolment -----------------------------------------------------------------------------


def _check_device_id(device_id: str) -> None:
    try:
        validate_device_id(device_id)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if not re.fullmatch(DEVICE_ID_PATTERN, device_id):
        raise InvalidInput(
            f"device id {device_id!r} must match {DEVICE_ID_PATTERN} (letters, digits, _.:-)"
        )
    # the hub's own MQTT client ids start so (edgeloop-hub-ingest, ...): as a device's login
    # (= its client id on the device listener) such an id could take over their sessions
    if device_id.startswith(HUB_CLIENT_ID_PREFIX):
        raise InvalidInput(
            f"device id {device_id!r} is reserved: ids starting with {HUB_CLIENT_ID_PREFIX!r} "
            "belong to the hub's own broker user and MQTT clients"
        )


def enroll_device(
    session: Session,
    *,
    device_id: str,
    token: str | None,
    capabilities: Mapping[str, str],
    tags: Mapping[str, str],
    settings: DeviceEndpoints,
    group: str | None = None,
) -> EnrollResult:
    """Enrol (or re-enrol) ``device_id``: with a ``token`` from a device, or None from an admin.

    The token's group and tags apply; ``tags`` from the request are added on top (the
    token's win on a clash: an operator's label cannot be overridden by the device).
    Raises Unauthorized (unknown token), EnrollmentRefused (expired / used up / revoked)
    or InvalidInput (bad device id). The caller commits, then syncs the broker.
    """
    _check_device_id(device_id)
    claimed = _claim(session, token=token) if token is not None else None
    merged_tags = {**dict(tags), **(claimed.tags if claimed else {})}
    device = session.get(Device, device_id)
    created = device is None
    if device is None:
        device = Device(id=device_id)
    if claimed is not None:
        device.group = claimed.group
    elif group is not None:
        device.group = group
    device.tags = {**device.tags, **merged_tags}
    device.capabilities = {**device.capabilities, **dict(capabilities)}
    session.add(device)

    password = new_password()
    credential = session.get(DeviceCredential, device_id)
    rotated = credential is not None and credential.revoked_at is None
    if credential is None:
        credential = DeviceCredential(device_id=device_id, username=device_id, password_hash="")
    else:
        credential.rotations += 1
    credential.password_hash = hash_password(password)
    credential.issued_at = utcnow()
    credential.revoked_at = None
    credential.enrollment_token_id = claimed.id if claimed else None
    session.add(credential)
    session.flush()
    return EnrollResult(
        device_id=device_id,
        mqtt_username=credential.username,
        mqtt_password=password,
        hub_public_key=settings.hub_public_key,
        mqtt_url=settings.mqtt_url,
        artifact_endpoint=settings.artifact_endpoint,
        created=created,
        rotated=rotated,
    )


def _revoke_certificates(session: Session, *, device_id: str) -> int:
    """Mark every live client certificate of the device revoked (the CRL lists them)."""
    revoked = session.execute(
        update(DeviceCertificate)
        .where(col(DeviceCertificate.device_id) == device_id)
        .where(col(DeviceCertificate.revoked_at).is_(None))
        .values(revoked_at=utcnow())
    )
    return int(revoked.rowcount or 0)  # type: ignore[attr-defined]


def issue_client_certificate(
    session: Session, *, ca: DeviceCA, device_id: str, csr_pem: bytes, days: float
) -> Issued:
    """Sign the device's CSR (CN = ``device_id``); its earlier certificates are revoked.

    Raises InvalidInput for a CSR the hub will not sign. Call after :func:`enroll_device`
    in the same session.
    """
    from hub.security.client_certs import CsrRejected

    try:
        issued = ca.issue(csr_pem, common_name=device_id, days=days)
    except CsrRejected as exc:
        raise InvalidInput(str(exc)) from None
    _revoke_certificates(session, device_id=device_id)
    session.add(
        DeviceCertificate(
            serial=format(issued.serial, "x"), device_id=device_id, not_after=issued.not_after
        )
    )
    session.flush()
    return issued


def revoke_device(session: Session, *, device_id: str) -> DeviceCredential:
    """Remove the device's broker login (the row stays, marked revoked) and revoke its
    client certificates; sync the broker next."""
    credential = session.get(DeviceCredential, device_id)
    if credential is None:
        if session.get(Device, device_id) is None:
            raise NotFound(f"no device {device_id!r} (list them with: edgeloop device list)")
        raise Conflict(f"device {device_id!r} has no credentials (was it ever enrolled?)")
    if credential.revoked_at is None:
        credential.revoked_at = utcnow()
        session.add(credential)
    _revoke_certificates(session, device_id=device_id)
    session.flush()
    return credential


def revoke_if_enrolled(session: Session, *, device_id: str) -> bool:
    """Revoke the device's login if it has a live one (device removal); True if it did."""
    credential = session.get(DeviceCredential, device_id)
    if credential is None or credential.revoked_at is not None:
        return False
    revoke_device(session, device_id=device_id)
    return True


def credential_status(session: Session, *, device_id: str) -> dict[str, object]:
    credential = session.get(DeviceCredential, device_id)
    if credential is None:
        return {"device_id": device_id, "enrolled": False}
    return {
        "device_id": device_id,
        "enrolled": credential.revoked_at is None,
        "issued_at": credential.issued_at,
        "rotations": credential.rotations,
        "revoked_at": credential.revoked_at,
    }
