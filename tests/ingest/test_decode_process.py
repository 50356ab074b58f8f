"""IngestWorker(decode_process=True): decoding and storing in a child process, against a real
Mosquitto, on SQLite and PostgreSQL. Same guarantees as the in-thread path: stored exactly
once, acked only after the commit, delivery-ack keys, exact counters; and a SIGKILLed child
is replaced with its un-acked batches resubmitted."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from hub.core.db import make_engine
from hub.ingest import IngestWorker, gaps
from hub.ingest._split import DecodeProcess
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import TelemetryWindowRow, create_all
from proto import messages_pb2 as pb
from proto.topics import TopicKind, Topics
from tests.ingest import helpers as h

DEVICES = ["dp-0", "dp-1", "dp-2"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    h.register(engine, *DEVICES)
    yield engine
    engine.dispose()


def _worker(
    engine: Engine, broker: EmbeddedBroker, topics: Topics, client_id: str, **kw: object
) -> IngestWorker:
    return IngestWorker(
        engine=engine,
        mqtt_url=broker.url,
        fleet=topics.fleet,
        client_id=client_id,
        decode_process=True,
        **kw,  # type: ignore[arg-type]
    )


def _child(worker: IngestWorker) -> DecodeProcess:
    assert worker.decode_process is not None
    return worker.decode_process


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(TelemetryWindowRow)).scalar_one())


def _publish_windows(broker: EmbeddedBroker, topics: Topics, seqs: range) -> None:
    with h.publisher(broker.port) as publish:
        for seq in seqs:
            for device in DEVICES:
                publish(topics.telemetry(device), h.window(device, seq), wait=False)


def _assert_nothing_unacked(
    engine: Engine, broker: EmbeddedBroker, topics: Topics, client_id: str
) -> None:
    """Reconnect the same persistent session: the broker sends what it still holds un-acked
    ahead of a marker published afterwards, so only the marker arrives when all were acked."""
    worker = IngestWorker(
        engine=engine, mqtt_url=broker.url, fleet=topics.fleet, client_id=client_id
    )
    with worker, h.publisher(broker.port) as publish:
        publish(topics.telemetry(DEVICES[0]), h.window(DEVICES[0], 10_000))
        h.wait_until(lambda: worker.stats().received >= 1, what="the marker")
        worker.flush()
        stats = worker.stats()
    assert (stats.received, stats.stored) == (1, 1)


@contextmanager
def _acks(broker: EmbeddedBroker, topics: Topics) -> Iterator[dict[str, set[int]]]:
    """Every seq covered by the DeliveryAcks the hub publishes, per device."""
    seen: dict[str, set[int]] = {}

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        ack = pb.DeliveryAck.FromString(bytes(message.payload))
        for r in ack.ranges:
            seen.setdefault(ack.device_id, set()).update(range(r.first, r.last + 1))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acks-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topics.wildcard(TopicKind.ACK), qos=1)
    client.loop_start()
    try:
        yield seen
    finally:
        client.disconnect()
        client.loop_stop()


def test_stores_exactly_once_and_acks_after_commit(
    engine: Engine, mosquitto: EmbeddedBroker
) -> None:
    topics = h.fleet_topics()
    client_id = f"dp-{uuid.uuid4().hex[:8]}"
    per_device, replays = 100, 20
    worker = _worker(engine, mosquitto, topics, client_id, batch_size=50)
    with _acks(mosquitto, topics) as acked, worker:
        _publish_windows(mosquitto, topics, range(1, per_device + 1))
        with h.publisher(mosquitto.port) as publish:
            for seq in range(1, replays + 1):  # resends: duplicates
                publish(topics.telemetry(DEVICES[0]), h.window(DEVICES[0], seq), wait=False)
            publish(topics.telemetry("ghost"), h.window("ghost", 1))  # unknown device
            publish(topics.telemetry(DEVICES[1]), b"\x0a\xff\xff not protobuf")
        total = per_device * len(DEVICES) + replays + 2
        h.wait_until(lambda: worker.stats().received == total, what="every message")
        worker.flush()
        stats = worker.stats()
        h.wait_until(
            lambda: all(acked.get(d, set()) >= set(range(1, per_device + 1)) for d in DEVICES),
            what="delivery acks for every window",
        )
    assert (stats.stored, stats.duplicates, stats.pending) == (per_device * 3, replays, 0)
    assert stats.rejected == {"unknown_device": 1, "malformed": 1}
    assert stats.batches >= total // 50 and stats.decode_restarts == 0
    assert _rows(engine) == per_device * len(DEVICES)
    assert [(g.device_id, g.max_seq, g.missing) for g in gaps(engine)] == [
        (d, per_device, []) for d in DEVICES
    ]
    assert "ghost" in acked  # a rejection is final: acked too
    _assert_nothing_unacked(engine, mosquitto, topics, client_id)


@contextmanager
def _write_lock(engine: Engine) -> Iterator[None]:
    """Hold the database so that ingest commits wait (the child blocks, then retries)."""
    if engine.dialect.name == "sqlite":
        conn = sqlite3.connect(str(engine.url.database), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as pg:
        pg.execute("LOCK TABLE ingest_seq IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.rollback()


def test_sigkilled_child_is_replaced_and_its_batches_resubmitted(
    engine: Engine, mosquitto: EmbeddedBroker
) -> None:
    topics = h.fleet_topics()
    client_id = f"dp-{uuid.uuid4().hex[:8]}"
    half = 40  # windows per device and half
    worker = _worker(engine, mosquitto, topics, client_id, batch_size=25, batch_interval_s=0.05)
    with worker:
        _publish_windows(mosquitto, topics, range(1, half + 1))
        h.wait_until(lambda: worker.stats().stored == half * 3, what="the first half stored")
        with _write_lock(engine):
            _publish_windows(mosquitto, topics, range(half + 1, 2 * half + 1))
            # All of the second half handed to the child, none committed (the lock holds it).
            h.wait_until(
                lambda: (
                    worker.stats().received == 2 * half * 3
                    and _child(worker).in_flight_messages == half * 3
                ),
                what="the second half in flight",
            )
            old_pid = _child(worker).pid
            os.kill(old_pid, signal.SIGKILL)
            h.wait_until(lambda: worker.stats().decode_restarts == 1, what="a new child")
            assert _child(worker).pid != old_pid
            assert worker.stats().stored == half * 3 and worker.stats().pending == half * 3
        h.wait_until(lambda: worker.stats().stored == 2 * half * 3, what="the resubmission")
        worker.flush()
        stats = worker.stats()
    assert (stats.stored, stats.duplicates, stats.rejected, stats.pending) == (240, 0, {}, 0)
    assert stats.received == 240 and stats.decode_restarts == 1
    assert _rows(engine) == 240
    assert [(g.device_id, g.max_seq, g.missing) for g in gaps(engine)] == [
        (d, 2 * half, []) for d in DEVICES
    ]
    _assert_nothing_unacked(engine, mosquitto, topics, client_id)


def test_sigkill_at_any_point_of_a_stream_loses_nothing(
    engine: Engine, mosquitto: EmbeddedBroker
) -> None:
    topics = h.fleet_topics()
    per_device = 120
    total = per_device * len(DEVICES)
    with _worker(engine, mosquitto, topics, f"dp-{uuid.uuid4().hex[:8]}", batch_size=20) as worker:
        with h.publisher(mosquitto.port) as publish:
            for seq in range(1, per_device + 1):
                for device in DEVICES:
                    publish(topics.telemetry(device), h.window(device, seq), wait=False)
                if seq == per_device // 4:
                    h.wait_until(lambda: worker.stats().stored > 0, what="a first commit")
                    os.kill(_child(worker).pid, signal.SIGKILL)
        h.wait_until(
            lambda: worker.stats().stored + worker.stats().duplicates == total,
            what="every window handled",
        )
        worker.flush()
        stats = worker.stats()
    # A batch the dead child committed but could not report comes back as duplicates.
    assert stats.received == total and stats.pending == 0 and stats.rejected == {}
    assert stats.decode_restarts == 1
    assert _rows(engine) == total
    assert all(not g.missing for g in gaps(engine))


def test_clean_stop_drains_commits_and_acks(engine: Engine, mosquitto: EmbeddedBroker) -> None:
    topics = h.fleet_topics()
    client_id = f"dp-{uuid.uuid4().hex[:8]}"
    # Nothing is committed before stop(): a batch bigger than the stream, a long interval.
    worker = _worker(engine, mosquitto, topics, client_id, batch_size=1000, batch_interval_s=3600)
    with worker:
        _publish_windows(mosquitto, topics, range(1, 31))
        h.wait_until(lambda: worker.stats().received == 90, what="90 windows")
        assert worker.stats().pending == 90 and _rows(engine) == 0
        child = _child(worker)
    stats = worker.stats()
    assert (stats.stored, stats.pending, stats.batches) == (90, 0, 1)
    assert _rows(engine) == 90
    assert child.in_flight_batches == 0
    _assert_nothing_unacked(engine, mosquitto, topics, client_id)


def test_in_memory_sqlite_is_refused() -> None:
    engine = make_engine("sqlite:///:memory:")
    with pytest.raises(ValueError, match="in-memory SQLite"):
        IngestWorker(engine=engine, mqtt_url="mqtt://127.0.0.1:1", decode_process=True)


def test_command_line_decode_process(
    engine: Engine, database_url: str, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    """``python -m hub.ingest --decode-process`` (spawn re-imports its main module)."""
    topics = h.fleet_topics()
    stats = tmp_path / "stats.json"
    command = [
        sys.executable, "-m", "hub.ingest", "--database-url", database_url,
        "--mqtt-url", mosquitto.url, "--fleet", topics.fleet, "--no-shared",
        "--client-id", f"dp-{uuid.uuid4().hex[:8]}", "--stats-file", str(stats),
        "--decode-process",
    ]  # fmt: skip
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        h.wait_until(lambda: _stats(stats).get("connected") is True, what="worker connected")
        _publish_windows(mosquitto, topics, range(1, 21))
        h.wait_until(lambda: _stats(stats).get("stored") == 60, what="60 windows stored")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stderr.read().decode() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    final = _stats(stats)
    assert final["stopped"] is True and (final["stored"], final["pending"]) == (60, 0)
    assert _rows(engine) == 60


def _stats(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}
