"""The SQLite fast path of the ingest store (DB-API tuples, no SQLAlchemy bind processing)
writes exactly what the SQLAlchemy Core path writes, and the decode-side topic cache."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import SQLModel

from hub.core.db import make_engine
from hub.ingest import _decode
from hub.ingest import _store as store
from hub.ingest._decode import WRONG_TOPIC, Rejected, decode, parse_topic
from hub.ingest._sql import table
from hub.tables import FieldSample, IngestSeq, TelemetryWindowRow, create_all
from hub.tables.packed import unpack
from proto.topics import Topics
from tests.ingest import helpers as h

TOPICS = Topics()


def _item(device: str, seq: int, samples: int = 0) -> _decode.Item:
    return decode(
        topics=TOPICS,
        topic=TOPICS.telemetry(device),
        payload=h.window(device, seq, samples=samples),
        max_bytes=1 << 20,
    )


def _raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_fast_path_columns_cover_the_tables() -> None:
    cases: list[tuple[tuple[str, ...], type[SQLModel]]] = [
        (store.WINDOW_COLUMNS, TelemetryWindowRow),
        (store.SAMPLE_COLUMNS, FieldSample),
    ]
    for columns, model in cases:
        wanted = {c.name for c in table(model).columns if not c.primary_key}
        assert set(columns) == wanted and len(columns) == len(wanted)


def test_sqlite_fast_path_stores_what_sqlalchemy_stores(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{db}")
    create_all(engine)
    now = datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=UTC)
    fast = store.pack(_item("fast-1", 7, samples=2))
    result = store.write_batch(
        engine, [fast], groups={"fast-1": "lab"}, now=now, create_unknown=True
    )
    assert result.stored == 1
    # The same rows through SQLAlchemy Core, as the PostgreSQL path writes them.
    slow = _item("slow-1", 7, samples=2)
    assert slow.window is not None
    with engine.begin() as conn:
        conn.execute(
            insert(table(TelemetryWindowRow)),
            {**slow.window, "group": "lab", "received_at": now},
        )
        conn.execute(
            insert(table(FieldSample)),
            [{**s, "received_at": now} for s in slow.samples],
        )
        conn.execute(
            insert(table(IngestSeq)),
            {"device_id": "slow-1", "stream": "telemetry", "seq": 7, "received_at": now},
        )
    engine.dispose()
    skip = ("device_id", "packed")  # (the packed window holds the device id)
    cols = ", ".join(f'"{c}", typeof("{c}")' for c in store.WINDOW_COLUMNS if c not in skip)
    rows = _raw(db, f"SELECT {cols} FROM telemetry_window ORDER BY device_id")
    assert len(rows) == 2 and rows[0] == rows[1]
    blobs = _raw(db, "SELECT packed, typeof(packed) FROM telemetry_window ORDER BY device_id")
    assert [kind for _, kind in blobs] == ["blob", "blob"]
    fast_window, slow_window = (unpack(blob) for blob, _ in blobs)
    fast_window.device_id = "slow-1"
    assert fast_window == slow_window and fast_window.features and not fast_window.samples
    cols = ", ".join(f'"{c}", typeof("{c}")' for c in store.SAMPLE_COLUMNS if c != "device_id")
    rows = _raw(db, f"SELECT {cols} FROM field_sample ORDER BY device_id, id")
    assert len(rows) == 4 and rows[:2] == [
        (str(r[0]).replace("slow", "fast"), *r[1:]) for r in rows[2:]
    ]
    rows = _raw(db, "SELECT stream, seq, received_at, typeof(received_at) FROM ingest_seq")
    assert rows[0] == rows[1] == ("telemetry", 7, "2026-03-04 05:06:07.000089", "text")


def test_sqlite_datetime_matches_the_dialect() -> None:
    plus5 = timezone(timedelta(hours=5))
    for value in (
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(999, 5, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=plus5),
    ):
        want = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert store._sqlite_datetime(value) == want.zfill(26)


def test_packed_json_keeps_the_engines_output() -> None:
    for value in ({"a": [1, 2.5, "é"]}, [math.nan, math.inf], {"x": None}, [2**70], {3: True}):
        text = store._json(value)
        assert isinstance(text, store.JsonText)
        assert json.loads(text) == json.loads(json.dumps(value))
        assert store._json(text) is text  # already packed: left alone
    assert store._json([math.inf]) == json.dumps([math.inf])


@pytest.mark.parametrize("per_statement", [3, store.KEYS_PER_STATEMENT])
def test_keys_in_several_statements_dedupe_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_statement: int
) -> None:
    monkeypatch.setattr(store, "KEYS_PER_STATEMENT", per_statement)
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    now = datetime.now(UTC)
    first = [store.pack(_item("k-1", seq)) for seq in (1, 2, 3, 4)]
    assert store.write_batch(engine, first, groups={}, now=now, create_unknown=True).stored == 4
    again = [_item("k-1", seq) for seq in (3, 4, 5, 6, 7, 5, 8, 1, 9, 10)]
    result = store.write_batch(engine, again, groups={}, now=now, create_unknown=True)
    assert (result.stored, result.duplicates) == (6, 4)  # 5..10 new; 3, 4, 1 stored, 5 twice
    seqs = _raw(tmp_path / "hub.db", "SELECT seq FROM telemetry_window ORDER BY id")
    assert [s for (s,) in seqs] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # batch order kept
    engine.dispose()


def test_parsed_topics_are_cached_per_topics() -> None:
    topic = TOPICS.telemetry("cache-1")
    assert parse_topic(TOPICS, topic) == parse_topic(TOPICS, topic) == ("cache-1", "telemetry")
    other = Topics(prefix="elsewhere", fleet="x")
    with pytest.raises(Rejected) as rejected:
        parse_topic(other, topic)  # the cached answer belongs to another Topics
    assert rejected.value.reason == WRONG_TOPIC


def test_topic_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_decode, "PARSED_TOPICS_MAX", 5)
    for i in range(20):
        parse_topic(TOPICS, TOPICS.telemetry(f"bound-{i}"))
        assert len(_decode._PARSED) <= 5


def test_fast_path_errors_are_sqlalchemy_errors(tmp_path: Path) -> None:
    """The worker backs off on OperationalError and stores one by one on other
    SQLAlchemy errors: the DB-API cursor's errors must arrive as those, not as sqlite3's."""
    db = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{db}")
    create_all(engine)
    now = datetime.now(UTC)
    # A window row whose dedupe key is missing: the key is new, the row's insert collides.
    store.write_batch(engine, [_item("e-1", 1)], groups={}, now=now, create_unknown=True)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM ingest_seq")
    with pytest.raises(IntegrityError):
        store.write_batch(engine, [_item("e-1", 1)], groups={}, now=now, create_unknown=True)
    assert _raw(db, "SELECT count(*) FROM ingest_seq") == [(0,)]  # rolled back whole
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE field_sample")
    with pytest.raises(OperationalError):
        store.write_batch(
            engine, [_item("e-1", 2, samples=1)], groups={}, now=now, create_unknown=True
        )
    engine.dispose()
