"""Telemetry ingest: the IngestWorker (decode, dedupe, batched SQLite commit, ack after
commit) against a receive-only paho subscriber counting the same messages from the same
private Mosquitto, in the same run. Loss (seq gaps) and duplicates must be 0.

Both drain a backlog: the windows are published while the (persistent) session is offline,
then the rate at which it empties is measured, so the publisher never shares the GIL or
the CPU with what is measured."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import func, select

from bench._result import BenchResult
from hub.broker import EmbeddedBroker
from hub.db import create_all, make_engine, session_scope
from hub.ingest import IngestWorker, gaps
from hub.tables import Device, TelemetryWindowRow
from proto import messages_pb2 as pb
from proto.topics import Topics

DEVICES = 50
WINDOWS = 20_000
TARGET = 0.7


def _payloads(topics: Topics) -> list[tuple[str, bytes]]:
    out = []
    per_device = WINDOWS // DEVICES
    for seq in range(1, per_device + 1):
        for d in range(DEVICES):
            device = f"bench-{d}"
            w = pb.TelemetryWindow(
                device_id=device, seq=seq, model="m", version="1", window_start=seq * 10_000,
                window_end=(seq + 1) * 10_000, count=100, errors=0,
                latency=pb.Histogram(edges=[1, 2, 5, 10, 20], counts=[50, 30, 10, 5, 4, 1]),
                output_counts=[10] * 10,
                confidence=pb.Histogram(edges=[0.5, 0.9], counts=[5, 20, 75]),
                features=[pb.FeatureSketch(name=f"f{i}", index=i, counts=[1] * 11, count=100)
                          for i in range(8)],
            )  # fmt: skip
            out.append((topics.telemetry(device), w.SerializeToString()))
    return out


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _baseline(port: int, topics: Topics, messages: list[tuple[str, bytes]]) -> float:
    """Messages per second a paho MQTT 5 subscriber drains (auto-acked QoS 1, counting only)."""
    done, count = threading.Event(), [0]

    def on_message(_c: object, _u: object, _m: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == len(messages):
            done.set()

    def connect() -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5
        )
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum, props.SessionExpiryInterval = 1024, 3600
        client.on_message = on_message
        client.connect("127.0.0.1", port, clean_start=False, properties=props)
        return client

    client = connect()  # create the persistent session and its subscription, then leave
    client.subscribe(topics.shared("telemetry"), qos=1)
    client.loop(1.0)
    client.disconnect()
    _publish(port, messages)  # queued by the broker for the offline session
    client = connect()
    start = time.perf_counter()
    client.loop_start()
    done.wait(120)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return count[0] / elapsed


def _ingest(
    port: int, topics: Topics, messages: list[tuple[str, bytes]], db: Path
) -> dict[str, float]:
    engine = make_engine(f"sqlite:///{db}")
    create_all(engine)
    with session_scope(engine) as session:
        for d in range(DEVICES):
            session.add(Device(id=f"bench-{d}"))

    def worker() -> IngestWorker:
        return IngestWorker(
            engine=engine, mqtt_url=f"mqtt://127.0.0.1:{port}", fleet=topics.fleet,
            client_id="bench-ingest",
        )  # fmt: skip

    first = worker()  # create the persistent session and its subscriptions, then leave
    first.start()
    first.stop()
    _publish(port, messages)
    second = worker()
    start = time.perf_counter()
    second.start()
    deadline = time.monotonic() + 120
    while second.stats().stored + second.stats().duplicates < len(messages):
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    second.stop()
    stats = second.stats()
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(TelemetryWindowRow)).scalar_one()
    report = gaps(engine)
    engine.dispose()
    return {
        "rate": stats.stored / elapsed,
        "stored": stats.stored,
        "rows": rows,
        "duplicates": stats.duplicates,
        "rejected": stats.rejected_total,
        "batches": stats.batches,
        "lost": sum(g.missing_count for g in report) + (len(messages) - rows),
    }


def run() -> BenchResult:
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(kind="mosquitto", port=0, data_dir=Path(tmp))
        broker.start()
        try:
            base_topics = Topics(fleet="benchbase")
            ingest_topics = Topics(fleet="benchingest")
            baseline = _baseline(broker.port, base_topics, _payloads(base_topics))
            result = _ingest(
                broker.port, ingest_topics, _payloads(ingest_topics), Path(tmp) / "hub.db"
            )
        finally:
            broker.stop()
    ratio = result["rate"] / baseline
    clean = result["lost"] == 0 and result["duplicates"] == 0 and result["rejected"] == 0
    return BenchResult(
        name="ingest",
        baseline="receive-only paho MQTT 5 subscriber counting the same windows, same broker",
        ratio=ratio,
        target=f">= {TARGET} with 0 lost and 0 duplicates",
        met=ratio >= TARGET and clean,
        details={
            "windows": WINDOWS,
            "devices": DEVICES,
            "baseline_msgs_per_s": round(baseline),
            "ingest_msgs_per_s": round(result["rate"]),
            **{k: v for k, v in result.items() if k != "rate"},
        },
    )
