"""Database engine and sessions: one SQLModel code path for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine


def sqlalchemy_url(url: str) -> str:
    """A database URL as SQLAlchemy wants it: ``postgres(ql)://`` is driven by psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _dumps(value: Any) -> bytes:
    try:
        out = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value).encode()
    return json.dumps(value).encode() if b"null" in out else out


def json_dumps(value: Any) -> str:
    """The engines' JSON serializer: orjson (several times faster than ``json.dumps`` on the
    ingest path), with ``json.dumps``'s exact output wherever orjson would differ: values it
    refuses (ints beyond 64 bits ...) and NaN/Infinity, which orjson turns into ``null``
    (any ``null`` in its output sends the value through ``json.dumps``). A
    :func:`json_fragment` is written as it is."""
    if isinstance(value, orjson.Fragment):
        return orjson.dumps(value).decode()
    return _dumps(value).decode()


def json_loads(text: str | bytes) -> Any:
    """The engines' JSON deserializer: orjson (the monitor reads every telemetry row's 64+
    sketches: ~3x faster than ``json.loads``), ``json.loads`` for what orjson refuses (the
    NaN/Infinity :func:`json_dumps` writes through ``json.dumps``, ints beyond 64 bits)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def json_fragment(value: Any) -> orjson.Fragment:
    """``value`` serialised now, for a JSON column: the engine writes it without encoding it
    again, and a pending row holds one string instead of many small dicts and lists."""
    return orjson.Fragment(_dumps(value))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # Under WAL, NORMAL skips the fsync of every commit (only checkpoints sync): a commit is
    # durable against a crash of the process (the ingest crash test), not of the OS.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL (synchronous=NORMAL), foreign keys and a
    busy timeout; JSON columns are written by :func:`json_dumps`, read by :func:`json_loads`."""
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False},
            json_serializer=json_dumps,
            json_deserializer=json_loads,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, json_serializer=json_dumps, json_deserializer=json_loads
    )


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks, from a name."""
    return int.from_bytes(
        hashlib.sha256(f"edgeloop:{name}".encode()).digest()[:8], "big", signed=True
    )


def try_transaction_lock(session: Session, name: str) -> bool:
    """Take the transaction-scoped lock ``name`` without waiting: on PostgreSQL an advisory
    lock (``pg_try_advisory_xact_lock``, released at commit or rollback), so two hub replicas
    never work on the same thing at once; False when another transaction holds it. SQLite
    has one writer per database file anyway: always True there."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    got = session.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": advisory_key(name)}
    ).scalar_one()
    return bool(got)
