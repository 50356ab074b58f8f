"""One batch of decoded messages → one transaction, duplicates dropped on both databases.

Dedupe keys go in first with ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (SQLite and
PostgreSQL dialects): the keys that come back are new, so only their data rows are written,
in the same transaction. A duplicate never fails the batch; a concurrent worker inserting
the same key waits for (PostgreSQL) or is serialised with (SQLite) ours and then skips it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from hub.db import json_fragment
from hub.ingest._decode import Item
from hub.ingest._sql import table
from hub.tables.devices import Device
from hub.tables.fleet import (
    DeploymentEventRow,
    FeedbackLabelRow,
    FieldSample,
    IngestSeq,
    TelemetryWindowRow,
)
from proto.topics import TopicKind

_T = {
    "seq": table(IngestSeq),
    "event": table(DeploymentEventRow),
    "window": table(TelemetryWindowRow),
    "label": table(FeedbackLabelRow),
    "sample": table(FieldSample),
    "device": table(Device),
}


_WINDOW_JSON = ("latency", "output_counts", "confidence", "features", "shadow")
_SAMPLE_JSON = ("values", "shape")


def pack(item: Item) -> Item:
    """Serialise the JSON columns of ``item``'s rows now (in place; returns ``item``).

    A pending message then holds a few strings instead of dozens of small dicts and lists:
    they die young instead of reaching the old GC generation and triggering full
    collections, and the commit writes them without encoding them again.
    """
    window = item.window
    if window is not None:
        for key in _WINDOW_JSON:
            window[key] = json_fragment(window[key])
        for sample in item.samples:
            for key in _SAMPLE_JSON:
                sample[key] = json_fragment(sample[key])
    return item


@dataclass(frozen=True, slots=True)
class BatchResult:
    stored: int
    duplicates: int


def _table(name: str) -> Table:
    return _T[name]


def _insert(conn: Connection, table: Table) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"ingest supports SQLite and PostgreSQL, not {dialect}")


def write_batch(
    engine: Engine,
    items: list[Item],
    *,
    groups: Mapping[str, str],
    now: datetime,
    create_unknown: bool,
) -> BatchResult:
    """Store ``items`` in one transaction; returns how many were new and how many repeats."""
    with engine.begin() as conn:
        return _write(conn, items, groups=groups, now=now, create_unknown=create_unknown)


def _write(
    conn: Connection,
    items: list[Item],
    *,
    groups: Mapping[str, str],
    now: datetime,
    create_unknown: bool,
) -> BatchResult:
    seq_items: dict[tuple[str, str, int], Item] = {}
    events: dict[str, Item] = {}
    states: dict[str, Item] = {}
    duplicates = 0
    for item in items:
        if item.kind is TopicKind.STATE:
            states[item.device_id] = item  # the last one wins
        elif item.kind is TopicKind.EVENTS:
            if item.event_id in events:
                duplicates += 1
            else:
                events[item.event_id] = item
        else:
            key = (item.device_id, item.kind.value, item.seq)
            if key in seq_items:
                duplicates += 1
            else:
                seq_items[key] = item
    stored = len(states)
    new_keys = _insert_keys(conn, seq_items, now=now)
    duplicates += len(seq_items) - len(new_keys)
    stored += len(new_keys)
    _write_data(conn, [seq_items[key] for key in new_keys], groups=groups, now=now)
    if events:
        stmt = _insert(conn, _table("event")).on_conflict_do_nothing(index_elements=["event_id"])
        rows = [{**item.event, "received_at": now} for item in events.values() if item.event]
        new_events = conn.execute(stmt.returning(_table("event").c.event_id), rows).all()
        duplicates += len(events) - len(new_events)
        stored += len(new_events)
    _write_states(conn, states.values(), now=now, create_unknown=create_unknown)
    seen = {item.device_id for item in items if item.kind is not TopicKind.STATE}
    if seen:
        device = _table("device")
        conn.execute(update(device).where(device.c.id.in_(seen)).values(last_seen_at=now))
    return BatchResult(stored=stored, duplicates=duplicates)


def _insert_keys(
    conn: Connection, seq_items: dict[tuple[str, str, int], Item], *, now: datetime
) -> list[tuple[str, str, int]]:
    if not seq_items:
        return []
    table = _table("seq")
    stmt = _insert(conn, table).on_conflict_do_nothing(
        index_elements=["device_id", "stream", "seq"]
    )
    rows = [{"device_id": d, "stream": s, "seq": q, "received_at": now} for d, s, q in seq_items]
    returned = conn.execute(stmt.returning(table.c.device_id, table.c.stream, table.c.seq), rows)
    return [(d, s, int(q)) for d, s, q in returned.all()]


def _write_data(
    conn: Connection, items: list[Item], *, groups: Mapping[str, str], now: datetime
) -> None:
    windows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for item in items:  # the rows are completed in place (setting the same keys on a retry)
        if (window := item.window) is not None:
            window["group"] = groups.get(item.device_id, "default")
            window["received_at"] = now
            windows.append(window)
            for sample in item.samples:
                sample["received_at"] = now
            samples.extend(item.samples)
        for label in item.labels:
            label["received_at"] = now
        labels.extend(item.labels)
    for name, rows in (("window", windows), ("sample", samples), ("label", labels)):
        if rows:
            conn.execute(_table(name).insert(), rows)


def _write_states(
    conn: Connection, states: Iterable[Item], *, now: datetime, create_unknown: bool
) -> None:
    device = _table("device")
    for item in states:
        state = dict(item.state or {})
        if not item.online:  # a will or clean shutdown: keep the last full state, mark offline
            previous = conn.execute(
                device.select()
                .with_only_columns(device.c.state)
                .where(device.c.id == item.device_id)
            ).scalar()
            if previous:
                state = {**previous, "online": False}
        values = {"online": item.online, "state": state, "last_seen_at": now}
        done = conn.execute(update(device).where(device.c.id == item.device_id).values(**values))
        if done.rowcount == 0 and create_unknown:
            stmt = _insert(conn, device).on_conflict_do_nothing(index_elements=["id"])
            conn.execute(
                stmt,
                {
                    "id": item.device_id,
                    "group": "default",
                    "tags": {},
                    "capabilities": {},
                    "created_at": now,
                    **values,
                },
            )
