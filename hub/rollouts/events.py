"""The rollout modules' clock and event log: ``now``, ``aware`` and ``log_event``.

A leaf: it imports no other rollout module, so the operations (``service``), the shadow
phase and the controller's helpers all write events and read the time the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from hub.tables.rollouts import Rollout, RolloutEvent

__all__ = ["aware", "log_event", "now"]


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every time we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def log_event(
    session: Session,
    rollout: Rollout,
    kind: str,
    detail: str = "",
    *,
    device_id: str = "",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        RolloutEvent(
            rollout_id=rollout.id,
            kind=kind,
            phase=rollout.phase,
            device_id=device_id,
            detail=detail,
            data=data or {},
        )
    )
