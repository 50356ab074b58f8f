"""What one controller tick reads, and no more: the device rows whose state a tick can
change (as :class:`Live` rows: plain columns, written back by :func:`save` as one batched
``UPDATE`` of the changed columns), the settled ones as plain columns, the matching devices
without their ``state`` JSON, and that JSON only for the few devices a tick needs it for.

A tick runs several times a second; loading every row of a rollout and every device with its
JSON columns as ORM objects made its cost grow with the devices already done, and loading
(and flushing) the in-flight rows as ORM objects cost ~0.1 CPU-ms per row per tick: more
than the whole hub-side budget of a device's deploy (issue #20)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import String, TypeDecorator, and_, bindparam, cast, type_coerce, update
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
    (``last_seen_at`` and ``state`` are read by :func:`seen_after_publish` and :func:`states_of` for
    the few devices that need them)."""

    id: str
    group: str
    tags: Mapping[str, str]
    online: bool


@dataclass(slots=True, eq=False)
class Live:
    """A device row a tick may change, as plain columns (what an ORM ``RolloutDevice`` holds,
    less the cost). Change its fields freely; :func:`save` writes the changed ones."""

    rollout_id: str
    device_id: str
    phase: int = -1
    late: bool = False
    state: str = DeviceState.PENDING
    command_id: str = ""
    issued_at_ms: int = 0
    published_at: datetime | None = None
    commanded_at: datetime | None = None
    attempts: int = 0
    previous_model: str = ""
    previous_version: str = ""
    previous_digest: str = ""
    rollback_command_id: str = ""
    rollback_issued_at_ms: int = 0
    rollback_published_at: datetime | None = None
    rollback_attempts: int = 0
    reason: str = ""
    updated_at: datetime | None = None
    #: the stored values of :data:`MUTABLE` (what :func:`save` compares with)
    stored: tuple[Any, ...] = field(default=(), repr=False)

    def values(self) -> tuple[Any, ...]:
        values: tuple[Any, ...] = _mutable(self)
        return values

    def changes(self) -> dict[str, Any]:
        """The columns changed since the row was read (or last saved)."""
        now = self.values()
        if now == self.stored:
            return {}
        pairs = zip(MUTABLE, self.stored, now, strict=True)
        return {name: new for name, old, new in pairs if old != new}


#: The columns of :class:`Live` a tick may change (all but the primary key).
MUTABLE = tuple(f.name for f in fields(Live) if f.name not in {"rollout_id", "device_id", "stored"})
_mutable = attrgetter(*MUTABLE)


def plain(column: Any) -> Any:
    """``column`` read without sqlmodel's ``AutoString`` result processing (a Python call
    per value that returns the value as it is: a third of reading a tick's rows)."""
    kind = column.type
    if isinstance(kind, TypeDecorator) and isinstance(kind.impl_instance, String):
        return type_coerce(column, String()).label(column.key)
    return column


_LIVE_COLUMNS = [
    plain(getattr(RolloutDevice, name)) for name in ("rollout_id", "device_id", *MUTABLE)
]
_SETTLED_COLUMNS = [plain(getattr(RolloutDevice, f.name)) for f in fields(Settled)]


def _live(values: Sequence[Any]) -> Live:
    row = Live(*values)
    row.stored = row.values()
    return row


def save(session: Session, rows: Iterable[Live]) -> int:
    """Write the changed columns of ``rows``: one ``executemany`` ``UPDATE`` per set of
    changed columns (a handful per tick), in the session's transaction. Returns the rows
    written; each is then stored as it is now."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    saved: list[Live] = []
    for row in rows:
        changed = row.changes()
        if not changed:
            continue
        params = {f"v_{name}": value for name, value in changed.items()}
        params |= {"k_rollout_id": row.rollout_id, "k_device_id": row.device_id}
        groups.setdefault(tuple(sorted(changed)), []).append(params)
        saved.append(row)
    if not saved:
        return 0
    session.flush()  # ORM work of this tick first (e.g. rows inserted by add_members)
    table = RolloutDevice.__table__  # type: ignore[attr-defined]  # sqlmodel's table
    connection = session.connection()
    for names, batch in groups.items():
        statement = (
            update(table)
            .where(
                and_(
                    table.c.rollout_id == bindparam("k_rollout_id"),
                    table.c.device_id == bindparam("k_device_id"),
                )
            )
            .values({name: bindparam(f"v_{name}") for name in names})
        )
        connection.execute(statement, batch)
    for row in saved:
        row.stored = row.values()
    return len(saved)


def insert(session: Session, rows: Sequence[Live]) -> None:
    """Insert new device rows (one ``executemany``); each is then stored as it is now."""
    if not rows:
        return
    for row in rows:
        row.stored = row.values()
    session.flush()
    table = RolloutDevice.__table__  # type: ignore[attr-defined]  # sqlmodel's table
    values = [
        {"rollout_id": r.rollout_id, "device_id": r.device_id}
        | dict(zip(MUTABLE, r.stored, strict=True))
        for r in rows
    ]
    session.connection().execute(table.insert(), values)


def all_rows(session: Session, rollout_id: str) -> list[RolloutDevice]:
    """Every device row of the rollout (a rollback looks at all of them)."""
    return list(
        session.exec(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(col(RolloutDevice.device_id))
        ).all()
    )


def live_rows(session: Session, rollout_id: str) -> tuple[list[Live], list[Settled], list[Settled]]:
    """(rows a tick may change from their events or time, as :class:`Live` rows; rows
    waiting for a phase or a command, as :class:`Settled` columns; the settled rest).

    A waiting row (``pending``, or not chosen for a phase yet whatever its state) changes
    only when a phase starts or when it is commanded: :func:`load` reads those few in full
    then. Reading every waiting row in full every tick (900 of 1,000 while a 10% phase
    runs) was most of a tick."""
    settled = [s.value for s in SETTLED]
    waiting = or_(RolloutDevice.state == DeviceState.PENDING, col(RolloutDevice.phase) < 0)
    live = session.exec(
        select(*_LIVE_COLUMNS)
        .where(
            RolloutDevice.rollout_id == rollout_id,
            col(RolloutDevice.state).not_in(settled),
            ~waiting,
        )
        .order_by(col(RolloutDevice.device_id))
    ).all()
    rest = session.exec(
        select(*_SETTLED_COLUMNS)
        .where(
            RolloutDevice.rollout_id == rollout_id,
            or_(col(RolloutDevice.state).in_(settled), waiting),
        )
        .order_by(col(RolloutDevice.device_id))
    ).all()
    found = [Settled(*r) for r in rest]
    return (
        [_live(r) for r in live],
        [r for r in found if r.state == DeviceState.PENDING or r.phase < 0],
        [r for r in found if r.state in SETTLED and r.phase >= 0],
    )


def load(session: Session, rollout_id: str, device_ids: Iterable[str]) -> list[Live]:
    """These device rows of the rollout as :class:`Live` rows (to change them)."""
    ids = sorted(set(device_ids))
    found: list[Live] = []
    for i in range(0, len(ids), _CHUNK):
        query = select(*_LIVE_COLUMNS).where(
            RolloutDevice.rollout_id == rollout_id,
            col(RolloutDevice.device_id).in_(ids[i : i + _CHUNK]),
        )
        found.extend(_live(r) for r in session.exec(query).all())
    return found


#: Parsed ``tags`` JSON by its text: a tick reads every device's tags, and most devices
#: share a few tag sets; parsing each one's JSON every tick was most of a tick's cost.
_TAGS: dict[str, Mapping[str, str]] = {}
_TAGS_MAX = 100_000


def _tags(text: str | None) -> Mapping[str, str]:
    if not text:
        return {}
    found = _TAGS.get(text)
    if found is None:
        if len(_TAGS) >= _TAGS_MAX:
            _TAGS.clear()
        found = _TAGS[text] = dict(json.loads(text) or {})
    return found


def matching_devices(session: Session, rollout: Rollout) -> list[Member]:
    selector = parse_selector(rollout.selector)
    found = session.exec(
        select(
            plain(Device.id), plain(Device.group), cast(Device.tags, String), Device.online
        ).order_by(col(Device.id))
    ).all()
    members = [Member(i, group, _tags(tags), online) for i, group, tags, online in found]
    return [m for m in members if selector.matches(device_id=m.id, group=m.group, tags=m.tags)]


def seen_after_publish(session: Session, rollout_id: str) -> dict[str, datetime]:
    """When each online device whose deploy command is published but unanswered
    (``commanded``) was last seen, for those seen after the publish: one join, filtered in
    the database (not every waiting device's ``last_seen_at`` by id, every tick)."""
    row, device = RolloutDevice, Device
    query = (
        select(plain(row.device_id), device.last_seen_at)
        .join(device, col(device.id) == col(row.device_id))
        .where(
            row.rollout_id == rollout_id,
            row.state == DeviceState.COMMANDED,
            col(row.published_at).is_not(None),
            col(device.online),
            col(device.last_seen_at) > col(row.published_at),
        )
    )
    return {device_id: seen for device_id, seen in session.exec(query).all() if seen}


def states_of(session: Session, device_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The stored ``AgentState`` (protobuf JSON) of each device ({} when it has none)."""
    ids = sorted(set(device_ids))
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), _CHUNK):
        query = select(Device.id, Device.state).where(col(Device.id).in_(ids[i : i + _CHUNK]))
        for device_id, state in session.exec(query).all():
            found[device_id] = dict(state or {})
    return found
