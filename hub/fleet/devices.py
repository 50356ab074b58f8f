"""The device registry: plain keyword-only CRUD over the ``device`` table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from hub.core.errors import Conflict, NotFound
from hub.tables import Device, DeviceCreate, DeviceUpdate


def create_device(session: Session, *, device_in: DeviceCreate) -> Device:
    if session.get(Device, device_in.id) is not None:
        raise Conflict(f"device {device_in.id!r} already exists")
    device = Device.model_validate(device_in)
    session.add(device)
    try:
        session.flush()
    except IntegrityError as exc:  # created by a concurrent request since the check above
        raise Conflict(f"device {device_in.id!r} already exists") from exc
    return device


def get_device(session: Session, *, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r} (list them with: edgeloop device list)")
    return device


def list_devices(
    session: Session, *, group: str | None = None, tags: Mapping[str, str] | None = None
) -> Sequence[Device]:
    query = select(Device).order_by(col(Device.id))
    if group is not None:
        query = query.where(Device.group == group)
    devices = session.exec(query).all()
    if tags:  # tag filters run in Python: JSON operators differ between SQLite and PostgreSQL
        devices = [d for d in devices if all(d.tags.get(k) == v for k, v in tags.items())]
    return devices


def update_device(session: Session, *, device_id: str, update: DeviceUpdate) -> Device:
    device = get_device(session, device_id=device_id)
    if update.group is not None:
        device.group = update.group
    if update.tags is not None:
        device.tags = dict(update.tags)
    session.add(device)
    session.flush()
    return device


def delete_device(session: Session, *, device_id: str) -> None:
    session.delete(get_device(session, device_id=device_id))
    session.flush()
