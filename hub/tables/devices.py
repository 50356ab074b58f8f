"""The device registry: identity, group, tags, capabilities, last known state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import StringConstraints
from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, json_field

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]


class DeviceBase(HubModel):
    group: str = Field(default="default", index=True, max_length=128)
    tags: dict[str, str] = json_field()
    capabilities: dict[str, str] = json_field()


class DeviceCreate(DeviceBase):
    id: DeviceId = Field(description="stable device id (MQTT-safe)")


class DeviceUpdate(HubModel):
    group: str | None = Field(default=None, max_length=128)
    tags: dict[str, str] | None = None


#: ``Device.state`` is the device's last ``AgentState`` (protobuf JSON) plus this key: when
#: the hub received it, hub clock, unix ms as a string (the device's own ``updatedAt`` may be
#: hours off).
STATE_RECEIVED_KEY = "hubReceivedAtMs"


class Device(DeviceBase, table=True):
    __tablename__ = "device"

    id: str = Field(primary_key=True, max_length=128)
    online: bool = False
    state: dict[str, Any] = json_field()
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime | None = None


class DevicePublic(DeviceBase):
    id: str
    online: bool
    state: dict[str, Any]
    created_at: datetime
    last_seen_at: datetime | None
