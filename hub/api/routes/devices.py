"""The device registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from hub.api.deps import ContextDep, DeviceIdPath, SessionDep
from hub.core.errors import InvalidInput
from hub.fleet import devices
from hub.tables import DeviceCreate, DevicePublic, DeviceUpdate, LabelQuarantinePublic

router = APIRouter(prefix="/devices", tags=["devices"])

TAG_FILTER = r"^[^=]+=.*$"


def _tags(pairs: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"tag filter {pair!r} must look like key=value")
        tags[key] = value
    return tags


@router.post("", response_model=DevicePublic, status_code=201)
def create(body: DeviceCreate, session: SessionDep) -> DevicePublic:
    return DevicePublic.model_validate(devices.create_device(session, device_in=body))


@router.get("", response_model=list[DevicePublic])
def list_devices(
    session: SessionDep,
    group: Annotated[str | None, Query(max_length=128)] = None,
    tag: Annotated[
        list[Annotated[str, StringConstraints(pattern=TAG_FILTER)]],
        Query(description="key=value, repeatable (all must match)"),
    ] = [],  # noqa: B006
) -> list[DevicePublic]:
    found = devices.list_devices(session, group=group, tags=_tags(tag))
    return [DevicePublic.model_validate(d) for d in found]


class LiftQuarantine(BaseModel):
    reason: str = Field(min_length=1, description="why the labels can be trusted; kept")
    model: str | None = Field(default=None, description="only this model's quarantine")


@router.get("/quarantine", response_model=list[LabelQuarantinePublic])
def quarantine(
    session: SessionDep, model: str | None = None, lifted: bool = False
) -> list[LabelQuarantinePublic]:
    """Devices whose labels are kept out of retraining and canary gates (label consensus);
    ``lifted=true`` lists the lifted ones instead."""
    from hub.triggers import list_quarantine  # (numpy, the trigger machinery: on use)

    rows = list_quarantine(session, model=model, active=not lifted)
    return [LabelQuarantinePublic.model_validate(r) for r in rows]


@router.post("/{device_id}/quarantine/lift", response_model=list[LabelQuarantinePublic])
def lift(
    device_id: DeviceIdPath, body: LiftQuarantine, session: SessionDep
) -> list[LabelQuarantinePublic]:
    """Trust the device's labels again (tested anew on samples from now on)."""
    from hub.triggers import lift_quarantine

    rows = lift_quarantine(session, device_id=device_id, reason=body.reason, model=body.model)
    return [LabelQuarantinePublic.model_validate(r) for r in rows]


@router.get("/{device_id}", response_model=DevicePublic)
def show(device_id: DeviceIdPath, session: SessionDep) -> DevicePublic:
    return DevicePublic.model_validate(devices.get_device(session, device_id=device_id))


@router.patch("/{device_id}", response_model=DevicePublic)
def update(device_id: DeviceIdPath, body: DeviceUpdate, session: SessionDep) -> DevicePublic:
    device = devices.update_device(session, device_id=device_id, update=body)
    return DevicePublic.model_validate(device)


@router.delete("/{device_id}", status_code=204, response_model=None)
def delete(
    device_id: DeviceIdPath, session: SessionDep, request: Request, context: ContextDep
) -> None:
    """Remove the device; its broker login (if enrolled) is revoked with it."""
    from hub.api.routes.security import security
    from hub.security.enrollment import revoke_if_enrolled

    devices.delete_device(session, device_id=device_id)
    if revoke_if_enrolled(session, device_id=device_id):
        session.commit()
        security(request, context).broker_auth.sync_now()
