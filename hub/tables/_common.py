from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def json_field(*, default_factory: Any = dict) -> Any:
    """A JSON column (dicts/lists) that works on SQLite and PostgreSQL alike."""
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))
