"""Builders for device messages and a real MQTT publisher for the ingest tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine

from hub.core.db import session_scope
from hub.tables import Device
from proto import messages_pb2 as pb
from proto.topics import Topics

T0_MS = 1_700_000_000_000


def fleet_topics() -> Topics:
    """A fleet of its own, so tests on the session-shared broker never see each other."""
    return Topics(prefix="edgeloop/v1", fleet=f"t{uuid.uuid4().hex[:10]}")


def window(device: str, seq: int, *, samples: int = 0, dropped: int = 0, count: int = 10) -> bytes:
    w = pb.TelemetryWindow(
        device_id=device,
        seq=seq,
        model="digits",
        version="3",
        bundle_digest="sha256:" + "a" * 64,
        window_start=T0_MS + seq * 10_000,
        window_end=T0_MS + (seq + 1) * 10_000,
        count=count,
        errors=1,
        latency=pb.Histogram(edges=[1.0, 5.0], counts=[count - 2, 1, 1]),
        output_counts=[count - 3, 3],
        confidence=pb.Histogram(edges=[0.5], counts=[2, count - 2]),
        features=[pb.FeatureSketch(name="f0", index=0, counts=[1, 2], count=3, sum=1.5)],
        dropped_windows=dropped,
    )
    for i in range(samples):
        w.samples.add(
            prediction_id=f"{device}-p{seq}-{i}",
            values=[0.5, 1.5],
            shape=[2],
            predicted_label=1,
            at=T0_MS + seq * 10_000 + i,
        )
    return w.SerializeToString()


def feedback(device: str, seq: int, labels: int = 2) -> bytes:
    f = pb.Feedback(device_id=device, seq=seq)
    for i in range(labels):
        f.labels.add(
            prediction_id=f"{device}-p{i}",
            label=i % 2,
            at=T0_MS + i,
            model="digits",
            version="3",
            predicted_label=1,
        )
    return f.SerializeToString()


def event(device: str, event_id: str, kind: int = pb.EVENT_KIND_HEALTHY) -> bytes:
    return pb.DeploymentEvent(
        event_id=event_id,
        device_id=device,
        command_id="cmd-1",
        rollout_id="ro-1",
        kind=kind,
        progress=1.0,
        model="digits",
        version="3",
        at=T0_MS,
    ).SerializeToString()


def state(device: str, *, online: bool, version: str = "3") -> bytes:
    return pb.AgentState(
        device_id=device,
        online=online,
        agent_version="0.1.0",
        runtime="onnxruntime",
        active=pb.SlotState(model="digits", version=version, status=pb.SLOT_STATUS_SERVING),
        updated_at=T0_MS,
        last_command_id="cmd-1",
    ).SerializeToString()


def register(engine: Engine, *devices: str, group: str = "default") -> None:
    with session_scope(engine) as session:
        for device in devices:
            session.add(Device(id=device, group=group))


def wait_until(
    check: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` (a wait only)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def publisher(url_port: int) -> Iterator[Callable[..., None]]:
    """``publish(topic, payload, retain=False)`` at QoS 1, returning once the broker has it."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    pending: list[mqtt.MQTTMessageInfo] = []

    def publish(topic: str, payload: bytes, *, retain: bool = False, wait: bool = True) -> None:
        info = client.publish(topic, payload, qos=1, retain=retain)
        pending.append(info)
        if wait:
            info.wait_for_publish(10)

    try:
        yield publish
        for info in pending:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
