"""The rollout modules' event log: ``log_event`` (their clock is :mod:`hub.core.clock`).

A leaf: it imports no other rollout module, so the operations (``service``), the shadow
phase and the controller's helpers all write events the same way.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from hub.tables.rollouts import Rollout, RolloutEvent

__all__ = ["log_event"]


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
