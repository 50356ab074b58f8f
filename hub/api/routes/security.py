"""Enrolment tokens, admin enrolment and revocation of devices, API tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from pydantic import Field
from sqlmodel import SQLModel

from hub.api.deps import ContextDep, DeviceIdPath, RowIdPath, SessionDep
from hub.api.public import (
    ApiTokenCreatedPublic,
    CredentialStatusPublic,
    DeviceRevokedPublic,
    EnrollmentPublic,
    EnrollmentTokenCreatedPublic,
)
from hub.fleet import devices
from hub.security import api_tokens, enrollment
from hub.tables import (
    ApiTokenCreate,
    ApiTokenPublic,
    EnrollmentTokenCreate,
    EnrollmentTokenPublic,
)

if TYPE_CHECKING:  # the broker's password file and the device CA load when enrolment runs
    from hub.security.runtime import Security

enrollment_tokens = APIRouter(prefix="/enrollment-tokens", tags=["security"])
device_credentials = APIRouter(prefix="/devices", tags=["security"])
admin_tokens = APIRouter(prefix="/tokens", tags=["security"])


class AdminEnroll(SQLModel):
    group: str | None = Field(default=None, max_length=128)
    tags: dict[str, str] = Field(default_factory=dict)
    capabilities: dict[str, str] = Field(default_factory=dict)


def security(request: Request, context: ContextDep) -> Security:
    """The app's Security (``hub serve`` sets one with the live endpoints); else built once."""
    from hub.mqtt.auth import BrokerAuth
    from hub.security.runtime import Security

    found: Security | None = getattr(request.app.state, "security", None)
    if found is None:
        found = Security(
            settings=context.settings,
            engine=context.engine,
            broker_auth=BrokerAuth(settings=context.settings, engine=context.engine),
        )
        request.app.state.security = found
    return found


@enrollment_tokens.post("", status_code=201, response_model=EnrollmentTokenCreatedPublic)
def create_enrollment_token(
    body: EnrollmentTokenCreate, session: SessionDep
) -> EnrollmentTokenCreatedPublic:
    """A token devices enrol with; the token is in this answer only."""
    row, token = enrollment.create_enrollment_token(session, spec=body)
    public = EnrollmentTokenPublic.model_validate(row)
    return EnrollmentTokenCreatedPublic(**public.model_dump(), token=token)


@enrollment_tokens.get("", response_model=list[EnrollmentTokenPublic])
def list_enrollment_tokens(session: SessionDep) -> list[EnrollmentTokenPublic]:
    rows = enrollment.list_enrollment_tokens(session)
    return [EnrollmentTokenPublic.model_validate(r) for r in rows]


@enrollment_tokens.post("/{token_id}/revoke", response_model=EnrollmentTokenPublic)
def revoke_enrollment_token(token_id: RowIdPath, session: SessionDep) -> EnrollmentTokenPublic:
    row = enrollment.revoke_enrollment_token(session, token_id=token_id)
    return EnrollmentTokenPublic.model_validate(row)


@device_credentials.post("/{device_id}/enroll", status_code=201, response_model=EnrollmentPublic)
def enroll_device(
    device_id: DeviceIdPath, body: AdminEnroll, request: Request, context: ContextDep
) -> EnrollmentPublic:
    """Admin-initiated enrolment: MQTT credentials (password shown once) and endpoints."""
    result = security(request, context).enroll(
        device_id=device_id,
        token=None,
        capabilities=body.capabilities,
        tags=body.tags,
        group=body.group,
    )
    return EnrollmentPublic.model_validate(result.public())


@device_credentials.post("/{device_id}/revoke", response_model=DeviceRevokedPublic)
def revoke_device(
    device_id: DeviceIdPath, request: Request, context: ContextDep
) -> DeviceRevokedPublic:
    """Remove the device's broker login and reload the broker (it is disconnected)."""
    security(request, context).revoke(device_id=device_id)
    return DeviceRevokedPublic(device_id=device_id, revoked=True)


@device_credentials.get(
    "/{device_id}/credentials",
    response_model=CredentialStatusPublic,
    response_model_exclude_unset=True,
)
def credential_status(device_id: DeviceIdPath, session: SessionDep) -> CredentialStatusPublic:
    """Whether the device holds a live broker login (never the secret); 404: no such device."""
    devices.get_device(session, device_id=device_id)
    status = enrollment.credential_status(session, device_id=device_id)
    return CredentialStatusPublic.model_validate(status)


@admin_tokens.post("", status_code=201, response_model=ApiTokenCreatedPublic)
def create_api_token(body: ApiTokenCreate, session: SessionDep) -> ApiTokenCreatedPublic:
    """An API token with scope ``read`` or ``admin``; the token is in this answer only."""
    row, token = api_tokens.create_token(session, spec=body)
    return ApiTokenCreatedPublic(**ApiTokenPublic.model_validate(row).model_dump(), token=token)


@admin_tokens.get("", response_model=list[ApiTokenPublic])
def list_api_tokens(session: SessionDep) -> list[ApiTokenPublic]:
    return [ApiTokenPublic.model_validate(r) for r in api_tokens.list_tokens(session)]


@admin_tokens.post("/{token_id}/revoke", response_model=ApiTokenPublic)
def revoke_api_token(token_id: RowIdPath, session: SessionDep) -> ApiTokenPublic:
    return ApiTokenPublic.model_validate(api_tokens.revoke_token(session, token_id=token_id))


#: the module's routes, one router per path root
router = APIRouter()
router.include_router(enrollment_tokens)
router.include_router(device_credentials)
router.include_router(admin_tokens)
