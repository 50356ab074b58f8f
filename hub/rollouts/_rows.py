"""What one controller tick reads, and no more: the device rows whose state a tick can
change (as ORM rows), the settled ones as plain columns, the matching devices without their
``state`` JSON, and that JSON only for the few devices a tick needs it for.

A tick runs several times a second; loading every row of a rollout and every device with its
JSON columns as ORM objects made its cost grow with the devices already done."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, or_, select

from hub.rollouts.selectors import parse_selector
from hub.tables import Device
from hub.tables.rollouts import DeviceState, Rollout, RolloutDevice

S = DeviceState
#: States no tick of a rollout that is not rolling back changes (a rollback picks up healthy
#: rows and retries failed rollbacks: it reads every row; an operator's ``retry`` resets
#: rows itself, between ticks).
SETTLED = frozenset({S.HEALTHY, S.FAILED, S.SKIPPED, S.ROLLED_BACK, S.ROLLBACK_FAILED})
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Settled:
    """A device row in a :data:`SETTLED` state, read as the columns a tick looks at."""

    device_id: str
    phase: int
    state: str
    command_id: str
    published_at: datetime | None
    previous_model: str
    previous_version: str


@dataclass(frozen=True, slots=True)
class Member:
    """A device that matches the rollout's selector: the columns a tick reads of every one
    (``last_seen_at`` and ``state`` are read by :func:`seen_of` and :func:`states_of` for
    the few devices that need them)."""

    id: str
    group: str
    tags: Mapping[str, str]
    online: bool


def all_rows(session: Session, rollout_id: str) -> list[RolloutDevice]:
    """Every device row of the rollout (a rollback looks at all of them)."""
    return list(
        session.exec(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(col(RolloutDevice.device_id))
        ).all()
    )


def live_rows(session: Session, rollout_id: str) -> tuple[list[RolloutDevice], list[Settled]]:
    """(rows a tick may change, as ORM rows; the settled rest, as :class:`Settled`).

    A row not yet chosen for a phase counts as live whatever its state (choosing a phase
    sets it)."""
    settled = [s.value for s in SETTLED]
    live = session.exec(
        select(RolloutDevice)
        .where(
            RolloutDevice.rollout_id == rollout_id,
            or_(col(RolloutDevice.state).not_in(settled), col(RolloutDevice.phase) < 0),
        )
        .order_by(col(RolloutDevice.device_id))
    ).all()
    rest = session.exec(
        select(  # type: ignore[call-overload]  # more columns than sqlmodel's overloads
            RolloutDevice.device_id,
            RolloutDevice.phase,
            RolloutDevice.state,
            RolloutDevice.command_id,
            RolloutDevice.published_at,
            RolloutDevice.previous_model,
            RolloutDevice.previous_version,
        )
        .where(
            RolloutDevice.rollout_id == rollout_id,
            col(RolloutDevice.state).in_(settled),
            col(RolloutDevice.phase) >= 0,
        )
        .order_by(col(RolloutDevice.device_id))
    ).all()
    return list(live), [Settled(*r) for r in rest]


def matching_devices(session: Session, rollout: Rollout) -> list[Member]:
    selector = parse_selector(rollout.selector)
    found = session.exec(
        select(Device.id, Device.group, Device.tags, Device.online).order_by(col(Device.id))
    ).all()
    members = [Member(i, group, tags or {}, online) for i, group, tags, online in found]
    return [m for m in members if selector.matches(device_id=m.id, group=m.group, tags=m.tags)]


def seen_of(session: Session, device_ids: Iterable[str]) -> dict[str, datetime | None]:
    """When each device was last seen (any message)."""
    ids = sorted(set(device_ids))
    found: dict[str, datetime | None] = {}
    for i in range(0, len(ids), _CHUNK):
        query = select(Device.id, Device.last_seen_at).where(
            col(Device.id).in_(ids[i : i + _CHUNK])
        )
        found.update(session.exec(query).all())
    return found


def states_of(session: Session, device_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The stored ``AgentState`` (protobuf JSON) of each device ({} when it has none)."""
    ids = sorted(set(device_ids))
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), _CHUNK):
        query = select(Device.id, Device.state).where(col(Device.id).in_(ids[i : i + _CHUNK]))
        for device_id, state in session.exec(query).all():
            found[device_id] = dict(state or {})
    return found
