"""64-bit columns: unix milliseconds and device-sent counters fit on PostgreSQL too (its
``integer`` is 32-bit; SQLite would have hidden an overflow)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlmodel import select

from hub.core.db import make_engine, session_scope
from hub.tables import IngestSeq, TelemetryWindowRow, create_all
from hub.tables.rollouts import Rollout, RolloutDevice

BIG = 2**62


def test_millisecond_times_and_large_counters_round_trip(database_url: str) -> None:
    engine = make_engine(database_url)
    create_all(engine)
    now_ms = int(time.time() * 1000)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(engine) as s:
        s.add(
            Rollout(
                id="ro-1",
                model="m",
                version="1",
                bundle_digest="d",
                bundle_size=BIG,
                selector="all",
            )
        )
        s.flush()
        s.add(
            RolloutDevice(
                rollout_id="ro-1", device_id="d1", issued_at_ms=now_ms, rollback_issued_at_ms=now_ms
            )
        )
        s.add(IngestSeq(device_id="d1", stream="telemetry", seq=BIG))
        s.add(
            TelemetryWindowRow(
                device_id="d1", seq=BIG, window_start=at, window_end=at, count=BIG, errors=BIG
            )
        )
    with session_scope(engine) as s:
        device = s.exec(select(RolloutDevice)).one()
        window = s.exec(select(TelemetryWindowRow)).one()
        assert device.issued_at_ms == now_ms and device.rollback_issued_at_ms == now_ms
        assert (window.seq, window.count, window.errors) == (BIG, BIG, BIG)
        assert s.exec(select(IngestSeq)).one().seq == BIG
    engine.dispose()
