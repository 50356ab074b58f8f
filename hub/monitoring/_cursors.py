"""Cursor rows: the last row read per (stream, model, version), and each scope's state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import func
from sqlalchemy import select as sa_select
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
    (``seen``: those known to be there; emptied with the cache on a rollback). A cursor
    without totals (the first rows, or a database from before them) first counts the rows
    up to ``before``, once. Reads only: the new rows are flushed with the caller's
    transaction at its end, so SQLite's write lock is not held while detectors run."""
    totals = dict(cursor.pending or {})
    new = {str(r.device_id) for r in rows} - seen
    if "windows" not in totals:
        totals, earlier = _backfill(
            session, model=cursor.model, version=cursor.version, before=before
        )
        new = earlier | {str(r.device_id) for r in rows}  # counted afresh: check them all
    totals["windows"] = int(totals["windows"]) + len(rows)
    totals["predictions"] = int(totals["predictions"]) + sum(int(r.count) for r in rows)
    cursor.pending = totals
    md = MonitorDevice
    for chunk in chunks(sorted(new)):  # devices this process has not seen: written already?
        there = session.exec(
            select(md.device_id).where(
                md.model == cursor.model, md.version == cursor.version, col(md.device_id).in_(chunk)
            )
        ).all()
        missing = set(chunk) - set(there)
        session.add_all(
            MonitorDevice(model=cursor.model, version=cursor.version, device_id=d)
            for d in sorted(missing)
        )
    seen.update(new)


def _backfill(
    session: Session, *, model: str, version: str, before: int
) -> tuple[dict[str, int], set[str]]:
    if before <= 0:
        return {"windows": 0, "predictions": 0}, set()
    tw = TelemetryWindowRow
    where = (col(tw.model) == model, col(tw.version) == version, col(tw.id) <= before)
    windows, predictions = session.execute(
        sa_select(func.count(), func.sum(col(tw.count))).where(*where)
    ).one()
    devices = session.execute(sa_select(col(tw.device_id)).where(*where).distinct()).scalars()
    return {"windows": int(windows), "predictions": int(predictions or 0)}, set(devices)
