"""Database outages during ingest (issue #22, "Nothing acknowledged is lost"): a database
error is never a rejection. A fleet publishes telemetry throughout while the database goes
away; every window must end up stored exactly once, with no gap and no rejection counted.

- PostgreSQL (a private server, ``private_postgres``): every connection to the hub's
  database killed with ``pg_terminate_backend`` four times, then the server stopped
  (``pg_ctl stop -m fast``) for 20 s and started again. The device check meets the dead
  database (``REFRESH_S``); before the fix such windows were rejected as ``store_error``,
  acked and lost (thread path: 270 of 502 windows; decode process: the first batch).
  On the in-thread path and with the decode process.
- SQLite: another connection holds the write lock (``BEGIN EXCLUSIVE``) for 20 s.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hub.core.db import make_engine
from hub.ingest import IngestStats, IngestWorker, gaps
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import TelemetryWindowRow, create_all
from proto.topics import Topics
from tests.fixtures.services import PrivateCluster
from tests.ingest import helpers as h

DEVICES = [f"quiet-{i}" for i in range(10)]
PERIOD_S = 0.5  # each device: one window every PERIOD_S (the fleet: 20 windows/s)
OUTAGE_S = 20.0
# The device registry is reloaded at nearly every batch, as the default 10 s refresh is at
# nearly every window of a quiet fleet (agents send one per 10 s): the first batch after the
# database goes away always meets it in the device check, on both paths.
REFRESH_S = 0.05
PATHS = [pytest.param(False, id="thread"), pytest.param(True, id="decode-process")]


class Fleet:
    """``DEVICES`` publishing one telemetry window each per ``PERIOD_S`` (staggered), seqs
    1, 2, ... per device, at QoS 1 on one MQTT connection, until :meth:`stop`."""

    def __init__(self, broker: EmbeddedBroker, topics: Topics) -> None:
        self.sent = dict.fromkeys(DEVICES, 0)
        self._topics, self._stop = topics, threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleet-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.max_inflight_messages_set(1000)
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        step = PERIOD_S / len(DEVICES)
        while not self._stop.is_set():
            for device in DEVICES:
                seq = self.sent[device] + 1
                info = self._client.publish(
                    self._topics.telemetry(device), h.window(device, seq), qos=1
                )
                self._pending.append(info)
                self.sent[device] = seq
                if self._stop.wait(step):
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for info in self._pending:
            info.wait_for_publish(10)  # the broker has every window
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def total(self) -> int:
        return sum(self.sent.values())


@contextmanager
def _ingest(
    engine: Engine, broker: EmbeddedBroker, topics: Topics, split: bool
) -> Iterator[IngestWorker]:
    worker = IngestWorker(
        engine=engine,
        mqtt_url=broker.url,
        fleet=topics.fleet,
        client_id=f"outage-{uuid.uuid4().hex[:8]}",
        decode_process=split,
        device_refresh_s=REFRESH_S,
    )
    assert worker.start(), "ingest did not subscribe"
    try:
        yield worker
    finally:
        worker.stop()


def _check(engine: Engine, worker: IngestWorker, fleet: Fleet, what: str) -> IngestStats:
    """Wait until ingest has taken every window, then: stored once each, no gap, no
    rejection. Returns the worker's counters (for the report line)."""
    h.wait_until(
        lambda: worker.stats().stored >= fleet.total,
        timeout=30,
        what=f"all {fleet.total} windows stored after {what} (stats {worker.stats()})",
    )
    worker.flush()
    stats = worker.stats()
    t = TelemetryWindowRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.device_id, t.c.seq)).all()  # type: ignore[attr-defined]
    by_device: dict[str, list[int]] = {d: [] for d in DEVICES}
    for device_id, seq in rows:
        by_device[device_id].append(int(seq))
    for device in DEVICES:
        assert sorted(by_device[device]) == list(range(1, fleet.sent[device] + 1)), device
        assert [g.missing for g in gaps(engine, device)] == [[]], device
    assert stats.rejected == {}, f"rejected during {what}: {stats.rejected}"
    assert stats.stored == fleet.total == len(rows)
    print(
        f"\n{what}: published {fleet.total}, stored {stats.stored} (rows {len(rows)}), "
        f"duplicates {stats.duplicates}, rejected {stats.rejected_total}, "
        f"database retries {stats.store_retries}"
    )
    return stats


@pytest.mark.postgres
@pytest.mark.parametrize("split", PATHS)
def test_postgres_terminated_and_stopped_during_ingest(
    private_postgres: PrivateCluster, mosquitto_fresh: EmbeddedBroker, split: bool
) -> None:
    engine = make_engine(private_postgres.url)
    create_all(engine)
    h.register(engine, *DEVICES)
    topics = h.fleet_topics()
    try:
        with _ingest(engine, mosquitto_fresh, topics, split) as worker:
            fleet = Fleet(mosquitto_fresh, topics)
            try:
                time.sleep(2.0)
                killed = 0
                for _ in range(4):  # every connection of the hub's, mid-ingest
                    killed += private_postgres.terminate_backends()
                    time.sleep(0.5)
                assert killed > 0
                private_postgres.stop()
                stopped = time.monotonic()
                time.sleep(OUTAGE_S)
                private_postgres.start()
                outage = time.monotonic() - stopped
                time.sleep(2.0)
            finally:
                fleet.stop()
            stats = _check(engine, worker, fleet, f"{killed} backends killed, {outage:.1f} s stop")
            assert stats.store_retries > 0  # the outage was met, and waited out
    finally:
        engine.dispose()


def test_sqlite_locked_by_another_writer_during_ingest(
    mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    """The in-thread path (``hub serve``'s default), where the blocked write also stalls the
    MQTT loop; SQLite's 30 s busy timeout absorbs the 20 s lock (no retry is needed)."""
    path = tmp_path / "hub.db"
    engine = make_engine(f"sqlite:///{path}")
    create_all(engine)
    h.register(engine, *DEVICES)
    topics = h.fleet_topics()
    try:
        with _ingest(engine, mosquitto_fresh, topics, split=False) as worker:
            fleet = Fleet(mosquitto_fresh, topics)
            try:
                time.sleep(2.0)
                other = sqlite3.connect(path, timeout=10, isolation_level=None)
                other.execute("BEGIN EXCLUSIVE")  # the write lock, held by another writer
                locked = time.monotonic()
                time.sleep(OUTAGE_S)
                other.execute("COMMIT")
                other.close()
                outage = time.monotonic() - locked
                time.sleep(2.0)
            finally:
                fleet.stop()
            _check(engine, worker, fleet, f"SQLite write-locked {outage:.1f} s")
    finally:
        engine.dispose()
