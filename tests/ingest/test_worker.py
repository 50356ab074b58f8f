"""IngestWorker against a real Mosquitto, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from hub.core.db import make_engine
from hub.ingest import IngestWorker, gaps
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import (
    DeploymentEventRow,
    Device,
    FeedbackLabelRow,
    FieldSample,
    IngestSeq,
    TelemetryWindowRow,
    create_all,
)
from proto.topics import Topics
from tests.ingest import helpers as h


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    yield engine
    engine.dispose()


def _worker(engine: Engine, broker: EmbeddedBroker, topics: Topics, **kw: object) -> IngestWorker:
    return IngestWorker(
        engine=engine,
        mqtt_url=broker.url,
        fleet=topics.fleet,
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        **kw,  # type: ignore[arg-type]
    )


def _rows(engine: Engine, model: type) -> list:  # type: ignore[type-arg]
    with Session(engine) as session:
        return list(session.exec(select(model)).all())


def test_every_kind_is_stored(engine: Engine, mosquitto: EmbeddedBroker) -> None:
    topics = h.fleet_topics()
    h.register(engine, "cam-1", group="lab")
    with _worker(engine, mosquitto, topics) as worker, h.publisher(mosquitto.port) as publish:
        publish(topics.telemetry("cam-1"), h.window("cam-1", 1, samples=3))
        publish(topics.feedback("cam-1"), h.feedback("cam-1", 1, labels=2))
        publish(topics.events("cam-1"), h.event("cam-1", "ev-1"))
        publish(topics.state("cam-1"), h.state("cam-1", online=True), retain=True)
        h.wait_until(lambda: worker.stats().received == 4, what="4 messages")
        worker.flush()
        stats = worker.stats()
    assert (stats.stored, stats.duplicates, stats.rejected, stats.pending) == (4, 0, {}, 0)
    [win] = _rows(engine, TelemetryWindowRow)
    assert (win.device_id, win.seq, win.group, win.count, win.model) == (
        "cam-1",
        1,
        "lab",
        10,
        "digits",
    )
    assert win.latency["counts"] == [8, 1, 1]
    assert sorted(s.prediction_id for s in _rows(engine, FieldSample)) == [
        "cam-1-p1-0",
        "cam-1-p1-1",
        "cam-1-p1-2",
    ]
    assert [label.label for label in _rows(engine, FeedbackLabelRow)] == [0, 1]
    [ev] = _rows(engine, DeploymentEventRow)
    assert (ev.kind, ev.event_id, ev.rollout_id) == ("healthy", "ev-1", "ro-1")
    [device] = _rows(engine, Device)
    assert device.online is True and device.state["active"]["version"] == "3"
    assert device.last_seen_at is not None
    # the hub's receive time beside the device's own clock (the rollout controller's nudge)
    seen = device.last_seen_at.replace(tzinfo=device.last_seen_at.tzinfo or UTC)
    assert int(device.state["hubReceivedAtMs"]) == int(seen.timestamp() * 1000)


def test_duplicates_and_out_of_order_replays(engine: Engine, mosquitto: EmbeddedBroker) -> None:
    topics = h.fleet_topics()
    h.register(engine, "cam-1", "cam-2")
    sent = [("cam-1", 3), ("cam-1", 1), ("cam-2", 1), ("cam-1", 3), ("cam-1", 2), ("cam-1", 1)]
    with _worker(engine, mosquitto, topics, batch_size=4) as worker:
        with h.publisher(mosquitto.port) as publish:
            for device, seq in sent:
                publish(topics.telemetry(device), h.window(device, seq))
            publish(topics.events("cam-1"), h.event("cam-1", "ev-1"))
            publish(topics.events("cam-1"), h.event("cam-1", "ev-1"))
            publish(topics.feedback("cam-2"), h.feedback("cam-2", 1))
            publish(topics.feedback("cam-2"), h.feedback("cam-2", 1))
            h.wait_until(lambda: worker.stats().received == 10, what="10 messages")
        worker.flush()
        # The same window again in a later batch: dropped by the key already in the database.
        with h.publisher(mosquitto.port) as publish:
            publish(topics.telemetry("cam-2"), h.window("cam-2", 1))
            h.wait_until(lambda: worker.stats().received == 11, what="the replay")
        worker.flush()
        stats = worker.stats()
    assert (stats.stored, stats.duplicates) == (6, 5)
    windows = sorted((w.device_id, w.seq) for w in _rows(engine, TelemetryWindowRow))
    assert windows == [("cam-1", 1), ("cam-1", 2), ("cam-1", 3), ("cam-2", 1)]
    assert len(_rows(engine, DeploymentEventRow)) == 1
    assert len(_rows(engine, FeedbackLabelRow)) == 2
    assert len(_rows(engine, IngestSeq)) == 5
    assert all(not g.missing for g in gaps(engine))


def test_rejections_are_counted_and_valid_messages_get_in(
    engine: Engine, mosquitto: EmbeddedBroker
) -> None:
    topics = h.fleet_topics()
    h.register(engine, "cam-1")
    big = h.window("cam-1", 9, samples=200)
    bad = [
        (topics.telemetry("cam-1"), b"\x0a\xff\xff not protobuf"),  # malformed
        (f"{topics.base}/devices/$x/telemetry", h.window("$x", 1)),  # wrong topic
        (topics.telemetry("cam-1"), big),  # too large
        (topics.telemetry("cam-1"), h.window("cam-1", 0)),  # seq 0
        (topics.telemetry("cam-1"), h.window("cam-9", 1)),  # device mismatch
        (topics.telemetry("ghost"), h.window("ghost", 1)),  # unknown device
        (topics.state("ghost"), h.state("ghost", online=True)),  # unknown device
    ]
    with _worker(engine, mosquitto, topics, max_payload_bytes=len(big) - 1) as worker:
        with h.publisher(mosquitto.port) as publish:
            for seq, (topic, payload) in enumerate(bad, start=1):
                publish(topic, payload)
                publish(topics.telemetry("cam-1"), h.window("cam-1", seq))
            h.wait_until(lambda: worker.stats().received == 2 * len(bad), what="all messages")
        worker.flush()
        stats = worker.stats()
    assert stats.rejected == {
        "malformed": 1,
        "wrong_topic": 1,
        "too_large": 1,
        "seq_zero": 1,
        "device_mismatch": 1,
        "unknown_device": 2,
    }
    assert stats.stored == len(bad) and stats.pending == 0
    assert sorted(w.seq for w in _rows(engine, TelemetryWindowRow)) == list(range(1, 8))
    assert [d.id for d in _rows(engine, Device)] == ["cam-1"]


def test_unknown_devices_accepted_when_asked(engine: Engine, mosquitto: EmbeddedBroker) -> None:
    topics = h.fleet_topics()
    with _worker(engine, mosquitto, topics, accept_unknown_devices=True) as worker:
        with h.publisher(mosquitto.port) as publish:
            publish(topics.state("new-1"), h.state("new-1", online=True), retain=True)
            publish(topics.telemetry("new-1"), h.window("new-1", 1))
            h.wait_until(lambda: worker.stats().received == 2, what="2 messages")
        worker.flush()
        # The last will: offline, the last full state kept.
        with h.publisher(mosquitto.port) as publish:
            publish(topics.state("new-1"), h.state("new-1", online=False, version="0"), retain=True)
            h.wait_until(lambda: worker.stats().received == 3, what="the will")
        worker.flush()
    [device] = _rows(engine, Device)
    assert device.id == "new-1" and device.online is False
    assert device.state["active"]["version"] == "3" and device.state["online"] is False
    assert len(_rows(engine, TelemetryWindowRow)) == 1


def test_two_workers_split_a_shared_subscription(engine: Engine, mosquitto: EmbeddedBroker) -> None:
    topics = h.fleet_topics()
    devices = [f"d{i}" for i in range(4)]
    h.register(engine, *devices)
    per_device = 60
    shared = {"shared": True}
    with (
        _worker(engine, mosquitto, topics, **shared) as a,
        _worker(engine, mosquitto, topics, **shared) as b,
    ):
        with h.publisher(mosquitto.port) as publish:
            for seq in range(1, per_device + 1):
                for device in devices:
                    publish(topics.telemetry(device), h.window(device, seq), wait=False)
        total = per_device * len(devices)
        h.wait_until(lambda: a.stats().received + b.stats().received == total, what="every window")
        a.flush()
        b.flush()
        sa, sb = a.stats(), b.stats()
    assert sa.received > 0 and sb.received > 0  # the load was split
    assert sa.stored + sb.stored == total and sa.duplicates + sb.duplicates == 0
    assert len(_rows(engine, TelemetryWindowRow)) == total
    report = gaps(engine)
    assert [(g.device_id, g.max_seq, g.received, g.missing) for g in report] == [
        (d, per_device, per_device, []) for d in devices
    ]


def test_amqtt_plain_filters_and_mqtt_311(engine: Engine, amqtt_broker: EmbeddedBroker) -> None:
    topics = h.fleet_topics()
    h.register(engine, "cam-1")
    worker = _worker(engine, amqtt_broker, topics, shared=False, mqtt_protocol="3.1.1")
    assert not any(f.startswith("$share") for f in worker.filters)
    with worker:
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        pub.connect("127.0.0.1", amqtt_broker.port)
        pub.loop_start()
        for seq in (1, 2):
            pub.publish(topics.telemetry("cam-1"), h.window("cam-1", seq), qos=1).wait_for_publish(
                10
            )
        pub.disconnect()
        pub.loop_stop()
        h.wait_until(lambda: worker.stats().received == 2, what="2 windows via amqtt")
        worker.flush()
    assert sorted(w.seq for w in _rows(engine, TelemetryWindowRow)) == [1, 2]
