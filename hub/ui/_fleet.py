"""Fleet page data: devices with presence, the model each one serves, groups and tags, and
which devices' labels are quarantined (``hub.triggers.label_quality``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session

from hub.fleet import devices
from hub.tables import Device
from hub.triggers import list_quarantine


@dataclass(frozen=True, kw_only=True)
class FleetFilter:
    group: str = ""
    tag: str = ""  # key=value
    status: str = ""  # online | offline | ""
    q: str = ""  # substring of the device id

    def tags(self) -> dict[str, str]:
        key, sep, value = self.tag.partition("=")
        return {key.strip(): value.strip()} if sep and key.strip() else {}


@dataclass(frozen=True, kw_only=True)
class DeviceRow:
    id: str
    online: bool
    group: str
    tags: dict[str, str]
    active: str  # model@version serving, or ""
    active_status: str
    standby: str
    runtime: str
    agent_version: str
    last_seen_at: datetime | None
    quarantined: list[str] = field(default_factory=list)  # models its labels are quarantined for
    quarantine_reason: str = ""


@dataclass(kw_only=True)
class FleetView:
    rows: list[DeviceRow]
    total: int
    online: int
    groups: list[str]
    versions: dict[str, int] = field(default_factory=dict)  # model@version -> devices
    quarantined: int = 0  # devices with a label quarantine (all of the fleet)


def _slot(state: dict[str, Any], name: str) -> tuple[str, str]:
    slot = state.get(name) or {}
    if not isinstance(slot, dict) or not slot.get("model"):
        return "", ""
    return f"{slot.get('model')}@{slot.get('version', '?')}", str(slot.get("status", ""))


def _row(device: Device, quarantine: dict[str, list[tuple[str, str]]]) -> DeviceRow:
    state = device.state if isinstance(device.state, dict) else {}
    active, status = _slot(state, "active")
    standby, _ = _slot(state, "standby")
    return DeviceRow(
        id=device.id,
        online=bool(device.online),
        group=device.group,
        tags=dict(device.tags or {}),
        active=active,
        active_status=status.removeprefix("SLOT_STATUS_").lower(),
        standby=standby,
        runtime=str(state.get("runtime", "")),
        agent_version=str(state.get("agentVersion", "")),
        last_seen_at=device.last_seen_at,
        quarantined=[model for model, _ in quarantine.get(device.id, [])],
        quarantine_reason="; ".join(f"{m}: {r}" for m, r in quarantine.get(device.id, [])),
    )


def fleet_view(session: Session, *, flt: FleetFilter) -> FleetView:
    everything = devices.list_devices(session)
    groups = sorted({d.group for d in everything})
    chosen = devices.list_devices(session, group=flt.group or None, tags=flt.tags() or None)
    quarantine: dict[str, list[tuple[str, str]]] = {}
    for q in list_quarantine(session, active=True):
        quarantine.setdefault(q.device_id, []).append((q.model, q.reason))
    rows = [_row(d, quarantine) for d in chosen]
    if flt.status in {"online", "offline"}:
        rows = [r for r in rows if r.online == (flt.status == "online")]
    if flt.q:
        rows = [r for r in rows if flt.q.lower() in r.id.lower()]
    versions: dict[str, int] = {}
    for r in rows:
        if r.active:
            versions[r.active] = versions.get(r.active, 0) + 1
    return FleetView(
        rows=rows,
        total=len(everything),
        online=sum(1 for d in everything if d.online),
        groups=groups,
        versions=dict(sorted(versions.items())),
        quarantined=len(quarantine),
    )
