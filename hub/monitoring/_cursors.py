"""Cursor rows: the last row read per (stream, model, version), and each scope's state."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from sqlmodel import Session, col, select

from hub.tables.monitoring import MonitorCursor

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
