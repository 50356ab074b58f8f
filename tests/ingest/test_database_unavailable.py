"""A database error is never a rejection (issue #22): what counts as the database being
unavailable, the device check that cannot reach it, and a worker on a SQLite file locked past
its busy timeout (the fault suite's long outages: tests/faults/test_database_outage.py)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy import exc as sa_exc

from hub.core.db import make_engine
from hub.ingest import IngestWorker
from hub.ingest._batch import DatabaseUnavailable, Decoder, unavailable
from hub.ingest._decode import MALFORMED, Item
from hub.ingest._devices import DeviceCache
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import TelemetryWindowRow, create_all
from tests.ingest import helpers as h


class _Orig(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _error(cls: type[sa_exc.DBAPIError], sqlstate: str | None = None, **kw: Any) -> Exception:
    return cls("INSERT ...", None, _Orig(sqlstate), **kw)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (_error(sa_exc.OperationalError, "08006"), True),  # connection failure
        (_error(sa_exc.OperationalError, "57P01"), True),  # pg_terminate_backend
        (_error(sa_exc.OperationalError), True),  # SQLite "database is locked"
        (_error(sa_exc.InterfaceError), True),  # a closed connection
        (_error(sa_exc.ProgrammingError, connection_invalidated=True), True),
        (_error(sa_exc.OperationalError, "54000"), False),  # program limit: the row's doing
        (_error(sa_exc.IntegrityError, "23505"), False),
        (_error(sa_exc.DataError, "22021"), False),  # e.g. a NUL byte in a string
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
    ],
)
def test_what_counts_as_the_database_unavailable(error: Exception, outage: bool) -> None:
    assert unavailable(error) is outage


def test_a_device_check_without_a_database_raises_and_counts_nothing() -> None:
    topics = h.fleet_topics()
    engine = make_engine("postgresql://postgres@127.0.0.1:1/nowhere")  # refused at once
    rejected: list[tuple[str, str]] = []
    decoder = Decoder(
        topics=topics,
        max_bytes=1 << 20,
        devices=DeviceCache(engine=engine),
        accept_unknown=False,
        keys=True,
        reject=lambda reason, detail: rejected.append((reason, detail)),
    )
    items: list[Item] = []
    handled: list[tuple[str, str, int]] = []
    with pytest.raises(DatabaseUnavailable):
        decoder.add(topics.telemetry("d1"), h.window("d1", 1), items, handled)
    assert (items, handled, rejected) == ([], [], [])
    # bad input is still rejected (and its key acked) without asking the database
    decoder.add(topics.telemetry("d1"), b"\xff\xff\xff", items, handled)
    assert [reason for reason, _ in rejected] == [MALFORMED]
    engine.dispose()


def test_sqlite_locked_past_its_busy_timeout_waits_then_stores(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    """Another writer holds the lock longer than the (here 0.2 s) busy timeout: the store
    fails with "database is locked" and is retried; nothing is rejected or acked early."""
    path = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{path}")

    def short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=200")

    event.listen(engine, "connect", short_busy_timeout)  # after make_engine's own pragmas
    create_all(engine)
    devices = ["lk-1", "lk-2"]
    h.register(engine, *devices)
    topics = h.fleet_topics()
    other = sqlite3.connect(path, timeout=10, isolation_level=None)
    worker = IngestWorker(
        engine=engine,
        mqtt_url=mosquitto.url,
        fleet=topics.fleet,
        client_id=f"locked-{uuid.uuid4().hex[:8]}",
        device_refresh_s=0.0,  # the device check reads the (WAL: readable) file every time
    )
    try:
        with worker, h.publisher(mosquitto.port) as publish:
            other.execute("BEGIN EXCLUSIVE")
            for seq in range(1, 11):
                for device in devices:
                    publish(topics.telemetry(device), h.window(device, seq), wait=False)
            h.wait_until(lambda: worker.stats().store_retries >= 3, what="retries")
            held = worker.stats()
            assert (held.stored, held.rejected, held.pending) == (0, {}, 20)
            other.execute("COMMIT")
            h.wait_until(lambda: worker.stats().stored == 20, timeout=15, what="20 stored")
            assert worker.stats().rejected == {}
        with engine.connect() as conn:
            t = TelemetryWindowRow.__table__
            n = conn.execute(select(func.count()).select_from(t)).scalar_one()  # type: ignore[arg-type]
        assert n == 20
    finally:
        other.close()
        engine.dispose()
