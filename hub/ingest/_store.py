"""One batch of decoded messages → one transaction, duplicates dropped on both databases.

Dedupe keys go in first with ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (SQLite and
PostgreSQL dialects): the keys that come back are new, so only their data rows are written,
in the same transaction. A duplicate never fails the batch; a concurrent worker inserting
the same key waits for (PostgreSQL) or is serialised with (SQLite) ours and then skips it.

On SQLite the hot tables (``ingest_seq``, ``telemetry_window``, ``field_sample``) are
written through the DB-API cursor of the same connection and transaction, with rows as
tuples already in SQLite's storage format (datetimes as SQLAlchemy's ``DATETIME`` text,
JSON columns as the text :func:`pack` made): SQLAlchemy's per-value bind processing cost
more than the inserts themselves (~25 of ~48 us per window). PostgreSQL keeps the Core path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from hub.core.db import json_dumps
from hub.ingest._decode import Item
from hub.ingest._sql import table
from hub.tables.devices import STATE_RECEIVED_KEY, Device
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


class JsonText(str):
    """A JSON column's value already serialised (by :func:`pack`): written as it is."""

    __slots__ = ()


def _json(value: Any) -> JsonText:
    """``value`` as :func:`hub.core.db.json_dumps` writes it (orjson; its fallback where the
    output could differ), or ``value`` itself when it is serialised already."""
    if type(value) is JsonText:
        return value
    try:
        out = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return JsonText(json_dumps(value))
    return JsonText(json_dumps(value)) if b"null" in out else JsonText(out, "utf-8")


def pack(item: Item) -> Item:
    """Serialise the JSON columns of ``item``'s rows now (in place; returns ``item``).

    A pending message then holds a few strings instead of dozens of small dicts and lists:
    they die young instead of reaching the old GC generation and triggering full
    collections, and the commit writes them without encoding them again. Idempotent.
    """
    window = item.window
    if window is not None:
        for key in _WINDOW_JSON:
            window[key] = _json(window[key])
        for sample in item.samples:
            for key in _SAMPLE_JSON:
                sample[key] = _json(sample[key])
    return item


def _sqlite_datetime(value: datetime) -> str:
    """What SQLAlchemy's SQLite ``DATETIME`` (via ``UTCDateTime``) stores for ``value``:
    ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC, no offset."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:-6]  # (drops "+00:00")


# Column order of the SQLite fast path's tuples (tests check they cover each table).
WINDOW_COLUMNS = (
    "device_id", "seq", "group", "model", "version", "bundle_digest", "window_start",
    "window_end", "count", "errors", "latency", "output_counts", "confidence", "features",
    "shadow", "num_samples", "dropped_windows", "received_at", "packed",
)  # fmt: skip
SAMPLE_COLUMNS = (
    "device_id", "prediction_id", "values", "shape", "predicted_label", "model", "version",
    "at", "received_at",
)  # fmt: skip
KEYS_PER_STATEMENT = 2000  # 4 parameters each, far below SQLite's 32766


@contextmanager
def _cursor(conn: Connection, statement: str) -> Iterator[Any]:
    """A DB-API cursor of ``conn`` (same transaction) whose errors are raised as SQLAlchemy's
    (``OperationalError``, ``IntegrityError`` ...), as the Core path raises them: the worker
    backs off on the one and stores a failed batch one by one on the others."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()


def _sqlite_insert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"


_SQLITE_WINDOW = _sqlite_insert_sql("telemetry_window", WINDOW_COLUMNS)
_SQLITE_SAMPLE = _sqlite_insert_sql("field_sample", SAMPLE_COLUMNS)


def _pg_copy_sql(table: str, columns: tuple[str, ...]) -> str:
    return f"COPY {table} ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in columns)}) FROM STDIN"


_PG_WINDOW = _pg_copy_sql("telemetry_window", WINDOW_COLUMNS)
_PG_SAMPLE = _pg_copy_sql("field_sample", SAMPLE_COLUMNS)


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
    new_items = [item for key, item in seq_items.items() if key in new_keys]  # batch order
    _write_data(conn, new_items, groups=groups, now=now)
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
) -> set[tuple[str, str, int]]:
    """Insert the dedupe keys; returns those that were new (the others are duplicates)."""
    if not seq_items:
        return set()
    if conn.dialect.name == "sqlite":
        return _sqlite_insert_keys(conn, list(seq_items), now=_sqlite_datetime(now))
    return _pg_insert_keys(conn, list(seq_items), now=now)


_PG_KEYS = (
    "INSERT INTO ingest_seq (device_id, stream, seq, received_at)"
    " SELECT d, s, q, %s FROM unnest(%s::varchar[], %s::varchar[], %s::bigint[]) AS k(d, s, q)"
    " ON CONFLICT (device_id, stream, seq) DO NOTHING RETURNING device_id, stream, seq"
)


def _pg_insert_keys(
    conn: Connection, keys: list[tuple[str, str, int]], *, now: datetime
) -> set[tuple[str, str, int]]:
    """PostgreSQL: every key in one statement (three arrays), the new ones returned."""
    devices, streams, seqs = (list(column) for column in zip(*keys, strict=True))
    with _cursor(conn, _PG_KEYS) as cursor:
        cursor.execute(_PG_KEYS, (now, devices, streams, seqs))
        return {(d, s, int(q)) for d, s, q in cursor.fetchall()}


def _sqlite_insert_keys(
    conn: Connection, keys: list[tuple[str, str, int]], *, now: str
) -> set[tuple[str, str, int]]:
    new: set[tuple[str, str, int]] = set()
    with _cursor(conn, "INSERT INTO ingest_seq ... RETURNING") as cursor:
        for start in range(0, len(keys), KEYS_PER_STATEMENT):
            chunk = keys[start : start + KEYS_PER_STATEMENT]
            params: list[Any] = []
            for device_id, stream, seq in chunk:
                params += (device_id, stream, seq, now)
            cursor.execute(
                "INSERT INTO ingest_seq (device_id, stream, seq, received_at) VALUES "
                + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (device_id, stream, seq) DO NOTHING"
                " RETURNING device_id, stream, seq",
                params,
            )
            new.update(cursor.fetchall())
    return new


def _write_data(
    conn: Connection, items: list[Item], *, groups: Mapping[str, str], now: datetime
) -> None:
    if conn.dialect.name == "sqlite":
        _sqlite_write_data(conn, items, groups=groups, now=now)
        return
    windows: list[tuple[Any, ...]] = []
    samples: list[tuple[Any, ...]] = []
    labels: list[dict[str, Any]] = []
    js = _json  # (a no-op on what pack() serialised)
    for item in items:
        if (w := item.window) is not None:
            windows.append(
                (
                    w["device_id"], w["seq"], groups.get(item.device_id, "default"),
                    w["model"], w["version"], w["bundle_digest"], w["window_start"],
                    w["window_end"], w["count"], w["errors"], js(w["latency"]),
                    js(w["output_counts"]), js(w["confidence"]), js(w["features"]),
                    js(w["shadow"]), w["num_samples"], w["dropped_windows"], now, w["packed"],
                )
            )  # fmt: skip
            samples += [
                (
                    s["device_id"], s["prediction_id"], js(s["values"]), js(s["shape"]),
                    s["predicted_label"], s["model"], s["version"], s["at"], now,
                )
                for s in item.samples
            ]  # fmt: skip
        labels += [{**label, "received_at": now} for label in item.labels]
    for statement, rows in ((_PG_WINDOW, windows), (_PG_SAMPLE, samples)):
        if rows:
            with _cursor(conn, statement) as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
    if labels:
        conn.execute(_table("label").insert(), labels)


def _sqlite_write_data(
    conn: Connection, items: list[Item], *, groups: Mapping[str, str], now: datetime
) -> None:
    at = _sqlite_datetime(now)
    dt, js = _sqlite_datetime, _json  # (js: a no-op on what pack() serialised)
    windows: list[tuple[Any, ...]] = []
    samples: list[tuple[Any, ...]] = []
    labels: list[dict[str, Any]] = []
    for item in items:
        if (w := item.window) is not None:
            windows.append(
                (
                    w["device_id"], w["seq"], groups.get(item.device_id, "default"),
                    w["model"], w["version"], w["bundle_digest"], dt(w["window_start"]),
                    dt(w["window_end"]), w["count"], w["errors"], js(w["latency"]),
                    js(w["output_counts"]), js(w["confidence"]), js(w["features"]),
                    js(w["shadow"]),
                    w["num_samples"], w["dropped_windows"], at, w["packed"],
                )
            )  # fmt: skip
            samples += [
                (
                    s["device_id"], s["prediction_id"], js(s["values"]), js(s["shape"]),
                    s["predicted_label"], s["model"], s["version"], dt(s["at"]), at,
                )
                for s in item.samples
            ]  # fmt: skip
        labels += [{**label, "received_at": now} for label in item.labels]
    if windows:
        with _cursor(conn, _SQLITE_WINDOW) as cursor:
            cursor.executemany(_SQLITE_WINDOW, windows)
    if samples:
        with _cursor(conn, _SQLITE_SAMPLE) as cursor:
            cursor.executemany(_SQLITE_SAMPLE, samples)
    if labels:
        conn.execute(_table("label").insert(), labels)


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
        # the hub's clock, beside the device's updatedAt: the rollout controller tells a state
        # sent on a reconnect after a command from one sent before, whatever the device clock
        state[STATE_RECEIVED_KEY] = str(int(now.timestamp() * 1000))
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
