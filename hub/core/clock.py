"""The hub's one clock: aware UTC datetimes everywhere.

Every time the hub stores is UTC. SQLite hands datetimes back naive (PostgreSQL's
``timestamptz`` aware), so code that compares a stored time with :func:`utcnow` passes it
through :func:`aware` first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

__all__ = ["aware", "epoch_ms", "utcnow"]


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


@overload
def aware(at: datetime) -> datetime: ...
@overload
def aware(at: None) -> None: ...
def aware(at: datetime | None) -> datetime | None:
    """``at`` as an aware datetime: a naive one (from SQLite) is taken to be UTC."""
    if at is None or at.tzinfo is not None:
        return at
    return at.replace(tzinfo=UTC)


def epoch_ms(at: datetime) -> int:
    """Unix milliseconds of ``at`` (naive: UTC)."""
    return int(aware(at).timestamp() * 1000)
