"""The schema's fingerprint, stored in the database, so that a start on a database that
already carries the current schema checks it with one query instead of ``create_all``'s
per-table checks and :func:`~hub.tables.add_missing_columns`'s catalogue scan."""

from __future__ import annotations

import hashlib
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Field, SQLModel

from hub.core.clock import utcnow
from hub.tables.columns import HubModel

SCHEMA_TABLE = "edgeloop_schema"


class SchemaStamp(HubModel, table=True):
    """One row: the fingerprint of the schema the last full check left the database with."""

    __tablename__ = SCHEMA_TABLE

    id: int = Field(default=1, primary_key=True)
    fingerprint: str = Field(max_length=64)
    checked_at: datetime = Field(default_factory=utcnow)


def schema_fingerprint() -> str:
    """sha256 over every table of the schema and its columns' names: exactly what
    ``create_all`` (missing tables) and ``add_missing_columns`` (missing columns) act on;
    a change of a column's type, default or index is a migration neither does, so the
    fingerprint leaves them out (a new column or table changes it, a release with none does
    not). Computed from the loaded tables (SQLModel's metadata), in well under 1 ms."""
    lines = ["edgeloop-schema/1"]
    for name in sorted(SQLModel.metadata.tables):
        columns = SQLModel.metadata.tables[name].columns
        lines.append(f"{name}: {','.join(sorted(c.name for c in columns))}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def stored_fingerprint(engine: Engine) -> str | None:
    """The fingerprint the database carries (one query); None: none yet (a new database, or
    one from a release before the fingerprint)."""
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(f"SELECT fingerprint FROM {SCHEMA_TABLE} WHERE id = 1")
            ).first()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # no such table (yet)
        return None
    return None if row is None else str(row[0])


def store_fingerprint(engine: Engine, fingerprint: str) -> None:
    """Record ``fingerprint`` (the table exists: ``create_all`` made it)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {SCHEMA_TABLE} (id, fingerprint, checked_at)"
                " VALUES (1, :fingerprint, :at) ON CONFLICT (id) DO UPDATE"
                " SET fingerprint = excluded.fingerprint, checked_at = excluded.checked_at"
            ).bindparams(sa.bindparam("at", type_=sa.DateTime())),
            {"fingerprint": fingerprint, "at": utcnow()},
        )
