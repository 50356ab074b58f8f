"""Secrets the hub hands out, stored only as hashes: enrolment tokens, MQTT credentials, API tokens.

Tokens are long random strings, so one SHA-256 identifies them (``token_hash``, unique);
device MQTT passwords are kept as Mosquitto's ``$7$`` PBKDF2-SHA512 hash, which is what
the generated password file carries. Nothing here can be turned back into a secret.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import StringConstraints
from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, JsonInt, json_field


class EnrollmentTokenCreate(HubModel):
    group: str = Field(default="default", max_length=128)
    tags: dict[Annotated[str, StringConstraints(min_length=1)], str] = Field(default_factory=dict)
    max_uses: JsonInt = Field(default=1, ge=1, le=1_000_000)
    expires_in_s: JsonInt = Field(
        default=24 * 3600, gt=0, le=10 * 366 * 24 * 3600, description="lifetime in seconds"
    )
    name: str = Field(default="", max_length=128, description="a note for operators")


class EnrollmentToken(HubModel, table=True):
    """A secret devices trade for credentials: ``max_uses`` times, until ``expires_at``."""

    __tablename__ = "enrollment_token"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, max_length=64)
    name: str = Field(default="", max_length=128)
    group: str = Field(default="default", max_length=128)
    tags: dict[str, str] = json_field()
    max_uses: int = 1
    uses: int = 0
    expires_at: datetime
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class EnrollmentTokenPublic(HubModel):
    id: int
    name: str
    group: str
    tags: dict[str, str]
    max_uses: int
    uses: int
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None


class DeviceCredential(HubModel, table=True):
    """A device's MQTT login (username = device id); revoked rows stay for the audit trail."""

    __tablename__ = "device_credential"

    device_id: str = Field(primary_key=True, max_length=128)
    username: str = Field(max_length=128)
    password_hash: str = Field(max_length=256, description="Mosquitto $7$ PBKDF2-SHA512")
    issued_at: datetime = Field(default_factory=utcnow)
    rotations: int = 0
    enrollment_token_id: int | None = None
    revoked_at: datetime | None = None


class DeviceCertificate(HubModel, table=True):
    """A client certificate the device CA signed (``EDGELOOP_MQTT_CLIENT_CERTS``).

    Revoked rows (device revoked, or the device re-enrolled with a new key) are what the
    CRL lists; ``serial`` is the certificate's serial number in hex.
    """

    __tablename__ = "device_certificate"

    serial: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(index=True, max_length=128)
    issued_at: datetime = Field(default_factory=utcnow)
    not_after: datetime
    revoked_at: datetime | None = None


class TokenScope(StrEnum):
    READ = "read"
    ADMIN = "admin"


class ApiTokenCreate(HubModel):
    name: str = Field(min_length=1, max_length=128)
    scope: TokenScope = TokenScope.READ


class ApiToken(HubModel, table=True):
    """An admin-API bearer token: ``read`` may GET, ``admin`` may do everything."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, max_length=64)
    name: str = Field(max_length=128)
    scope: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ApiTokenPublic(HubModel):
    id: int
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
