"""Gap reports and telemetry roll-ups, on SQLite and PostgreSQL (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, select

from hub.core.db import make_engine
from hub.ingest import gaps
from hub.ingest._decode import decode
from hub.ingest._store import write_batch
from hub.ingest.retention import rollup_and_prune
from hub.tables import TelemetryRollup, TelemetryWindowRow, create_all
from proto.topics import Topics
from tests.ingest import helpers as h

TOPICS = Topics()


def _store(engine: Any, messages: list[tuple[str, bytes]]) -> None:
    items = [decode(topics=TOPICS, topic=t, payload=p, max_bytes=1 << 20) for t, p in messages]
    write_batch(engine, items, groups={}, now=datetime.now(UTC), create_unknown=False)


def test_gaps_report_missing_ranges_and_dropped_windows(database_url: str) -> None:
    engine = make_engine(database_url)
    create_all(engine)
    _store(
        engine,
        [
            (TOPICS.telemetry("a"), h.window("a", s, dropped=2 if s == 7 else 0))
            for s in (2, 3, 7, 9)
        ]
        + [(TOPICS.telemetry("b"), h.window("b", s)) for s in (1, 2)]
        + [(TOPICS.feedback("a"), h.feedback("a", s)) for s in (1, 4)],
    )
    report = {(g.device_id, g.stream): g for g in gaps(engine)}
    a = report[("a", "telemetry")]
    assert a.missing == [(1, 1), (4, 6), (8, 8)] and a.missing_count == 5
    assert (a.max_seq, a.received, a.dropped_windows) == (9, 4, 2)
    assert report[("b", "telemetry")].missing == [] and report[("b", "telemetry")].received == 2
    assert report[("a", "feedback")].missing == [(2, 3)]
    assert report[("a", "feedback")].dropped_windows == 0
    assert [g.stream for g in gaps(engine, device_id="b")] == ["telemetry"]
    assert gaps(engine, device_id="nobody") == []
    engine.dispose()


def test_rollup_sums_per_hour_prunes_and_is_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    create_all(engine)
    # Windows are 10 s apart from T0 (2023-11-14 22:13:20 UTC): seqs 1..400 span two hours.
    _store(engine, [(TOPICS.telemetry("a"), h.window("a", s, count=10)) for s in range(1, 401)])
    cutoff = datetime.fromtimestamp((h.T0_MS + 300 * 10_000) / 1000, tz=UTC)  # seqs < 300
    first = rollup_and_prune(engine, older_than=cutoff)
    assert first.rolled_up == 299
    again = rollup_and_prune(engine, older_than=cutoff)
    assert again.rolled_up == 0
    with Session(engine) as session:
        rollups = session.exec(select(TelemetryRollup).order_by(TelemetryRollup.hour)).all()
        left = session.exec(select(TelemetryWindowRow)).all()
    assert len(left) == 101 and min(w.seq for w in left) == 300
    assert sum(r.windows for r in rollups) == 299 and len(rollups) == 2
    assert sum(r.count for r in rollups) == 2990 and sum(r.errors for r in rollups) == 299
    assert [sum(r.latency["counts"]) for r in rollups] == [r.count for r in rollups]
    assert sum(r.output_counts[1] for r in rollups) == 3 * 299
    assert all(r.hour.minute == 0 and r.hour.second == 0 for r in rollups)
    # Everything left, later: added to the existing hour, never double counted.
    rollup_and_prune(engine, older_than=datetime(2100, 1, 1, tzinfo=UTC))
    with Session(engine) as session:
        rollups = session.exec(select(TelemetryRollup)).all()
    assert sum(r.windows for r in rollups) == 400 and sum(r.count for r in rollups) == 4000
    engine.dispose()
