from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Strict
from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel


class HubModel(SQLModel):
    """The base of the hub's tables and their API families. Pydantic builds a model's
    validator and serializer on its first use, not when the class is defined
    (``defer_build``): a command uses a few of these ~60 models, and building all of them
    was a third of importing :mod:`hub.tables` (~0.08 s of each in-process CLI command)."""

    model_config = ConfigDict(defer_build=True)  # type: ignore[assignment]


def json_field(*, default_factory: Any = dict) -> Any:
    """A JSON column (dicts/lists) that works on SQLite and PostgreSQL alike."""
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


def bigint_field(*, default: int = 0, primary_key: bool = False) -> Any:
    """A 64-bit integer column: unix milliseconds and device-sent counters overflow
    PostgreSQL's 32-bit ``integer`` (SQLite does not care, so only PostgreSQL would fail)."""
    if primary_key:
        return Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    return Field(default=default, sa_column=Column(BigInteger, nullable=False))


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A JSON integer as JSON Schema defines it: 3 and 3.0, never true, "3" or 3.5.
JsonInt = Annotated[int, Strict(), BeforeValidator(_integral)]
