"""Cursor rows: the last row read per (stream, model, version), and each scope's state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import func, literal
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from hub.tables.fleet import TelemetryWindowRow
from hub.tables.monitoring import MonitorCursor, MonitorDevice

RowT = TypeVar("RowT", bound=Any)

HEAD = "*"
CHUNK = 500  # values per SQL IN list


def head(session: Session, *, stream: str, model: str, version: str) -> MonitorCursor:
    """The version's read cursor, locked for this transaction on PostgreSQL."""
    query = (
        select(MonitorCursor)
        .where(
            MonitorCursor.stream == stream,
            MonitorCursor.model == model,
            MonitorCursor.version == version,
            MonitorCursor.scope == HEAD,
        )
        .with_for_update()
    )
    found = session.exec(query).first()
    if found is None:
        found = MonitorCursor(stream=stream, model=model, version=version, scope=HEAD, last_id=0)
        session.add(found)
    return found


def scope_rows(
    session: Session, *, stream: str, model: str, version: str, scopes: Iterable[str]
) -> dict[str, MonitorCursor]:
    """The cursor rows of ``scopes`` (those that have one), a query per 500 scopes."""
    out: dict[str, MonitorCursor] = {}
    for chunk in chunks(sorted(set(scopes))):
        for row in session.exec(
            select(MonitorCursor).where(
                MonitorCursor.stream == stream,
                MonitorCursor.model == model,
                MonitorCursor.version == version,
                col(MonitorCursor.scope).in_(chunk),
            )
        ).all():
            out[row.scope] = row
    return out


def chunks(values: list[str]) -> Iterable[list[str]]:
    """``values`` in pieces of at most ``CHUNK`` (one SQL IN list each)."""
    for i in range(0, len(values), CHUNK):
        yield values[i : i + CHUNK]


def next_batch(
    session: Session, *, table: type[RowT], stream: str, model: str, version: str, limit: int
) -> list[RowT]:
    """Up to ``limit`` rows of ``table`` for ``model@version`` past the version's read cursor,
    oldest first; the cursor moves past them (committed with the caller's transaction)."""
    cursor = head(session, stream=stream, model=model, version=version)
    rows = list(
        session.exec(
            select(table)
            .where(
                table.model == model,
                table.version == version,
                col(table.id) > cursor.last_id,
            )
            .order_by(col(table.id))
            .limit(limit)
        ).all()
    )
    if rows:
        cursor.last_id = max(int(r.id or 0) for r in rows)
        session.add(cursor)
    return rows


def count_rows(
    session: Session, cursor: MonitorCursor, rows: Sequence[Any], *, before: int, seen: set[str]
) -> None:
    """Keep a version's totals as its telemetry read cursor moves past ``rows``: windows and
    predictions in the cursor's ``pending``, each device that sent any in ``monitor_device``
    (``seen``: those already written; filled as this writes, emptied with the cache on a
    rollback). A cursor without totals (the first rows, or a database from before them)
    first counts the rows up to ``before``, once."""
    totals = dict(cursor.pending or {})
    if "windows" not in totals:
        totals = _backfill(session, model=cursor.model, version=cursor.version, before=before)
    totals["windows"] = int(totals["windows"]) + len(rows)
    totals["predictions"] = int(totals["predictions"]) + sum(int(r.count) for r in rows)
    cursor.pending = totals
    new = sorted({str(r.device_id) for r in rows} - seen)
    for chunk in chunks(new):
        values = [{"model": cursor.model, "version": cursor.version, "device_id": d} for d in chunk]
        session.execute(_insert(session).values(values).on_conflict_do_nothing())
    seen.update(new)


def _insert(session: Session) -> Any:
    table = MonitorDevice.__table__  # type: ignore[attr-defined]
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _backfill(session: Session, *, model: str, version: str, before: int) -> dict[str, int]:
    if before <= 0:
        return {"windows": 0, "predictions": 0}
    tw = TelemetryWindowRow
    where = (col(tw.model) == model, col(tw.version) == version, col(tw.id) <= before)
    windows, predictions = session.execute(
        sa_select(func.count(), func.sum(col(tw.count))).where(*where)
    ).one()
    devices = sa_select(literal(model), literal(version), col(tw.device_id)).where(*where)
    session.execute(
        _insert(session)
        .from_select(["model", "version", "device_id"], devices.distinct())
        .on_conflict_do_nothing()
    )
    return {"windows": int(windows), "predictions": int(predictions or 0)}
