"""Cursor rows: the last row read per (stream, model, version), and each scope's state."""

from __future__ import annotations

from sqlmodel import Session, col, select

from hub.tables.monitoring import MonitorCursor

HEAD = "*"


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
    session: Session, *, stream: str, model: str, version: str
) -> dict[str, MonitorCursor]:
    rows = session.exec(
        select(MonitorCursor).where(
            MonitorCursor.stream == stream,
            MonitorCursor.model == model,
            MonitorCursor.version == version,
            col(MonitorCursor.scope) != HEAD,
        )
    ).all()
    return {r.scope: r for r in rows}
