"""SQLAlchemy Core handles on SQLModel tables (bulk statements skip the ORM)."""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel


def table(model: type[SQLModel]) -> Table:
    found = getattr(model, "__table__", None)
    if not isinstance(found, Table):  # pragma: no cover - every table model has one
        raise TypeError(f"{model.__name__} is not a table model")
    return found
