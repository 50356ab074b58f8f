from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def json_field(*, default_factory: Any = dict) -> Any:
    """A JSON column (dicts/lists) that works on SQLite and PostgreSQL alike."""
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


def bigint_field(*, default: int = 0, primary_key: bool = False) -> Any:
    """A 64-bit integer column: unix milliseconds and device-sent counters overflow
    PostgreSQL's 32-bit ``integer`` (SQLite does not care, so only PostgreSQL would fail)."""
    if primary_key:
        return Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    return Field(default=default, sa_column=Column(BigInteger, nullable=False))
