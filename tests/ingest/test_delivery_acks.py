"""Hub delivery acks: a real Mosquitto, a real ingest worker, the agent's real MQTT session
and durable queue. With ``delivery = "hub_ack"`` an item leaves the queue when the hub has
handled it (stored, repeated or rejected for good), not at the broker's PUBACK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from edge_agent._session import MqttSession
from edge_agent.queue import OutboundQueue
from hub.core.db import make_engine
from hub.ingest import IngestWorker
from hub.ingest._acks import AckPublisher, ranges, rejected_key, seq_of
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import TelemetryWindowRow, create_all
from proto import messages_pb2 as pb
from proto.topics import Topics
from tests.ingest import helpers as h
from tests.ingest._device import DEVICE, device, until


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    h.register(engine, DEVICE)
    yield engine
    engine.dispose()


def stored_seqs(engine: Engine) -> list[int]:
    t = TelemetryWindowRow.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return sorted(int(r[0]) for r in conn.execute(select(t.c.seq)))


def send(session: MqttSession, queue: OutboundQueue, n: int, **window: Any) -> None:
    for _ in range(n):
        queue.append(stream="telemetry", payload_for=lambda seq: h.window(DEVICE, seq, **window))
    session.wake()


def worker(engine: Engine, broker: EmbeddedBroker, topics: Topics, **kw: Any) -> IngestWorker:
    return IngestWorker(
        engine=engine,
        mqtt_url=broker.url,
        fleet=topics.fleet,
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        **kw,
    )


def test_items_stay_queued_after_the_puback_until_the_hub_acks(
    engine: Engine, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = h.fleet_topics()
    ingest = worker(engine, mosquitto, topics, batch_size=1000, batch_interval_s=3600)

    async def scenario() -> None:
        async with device(mosquitto, topics, tmp_path, delivery="hub_ack") as (session, queue):
            send(session, queue, 3)
            await until(lambda: session.stats.published == 3, what="3 PUBACKs")
            await until(lambda: ingest.stats().pending >= 4, what="state + 3 windows received")
            await asyncio.sleep(0.3)
            assert len(queue) == 3 and queue.awaiting() == 3, "deleted at the PUBACK"
            assert stored_seqs(engine) == []
            await asyncio.to_thread(ingest.flush)  # the commit, then the ack
            await until(lambda: len(queue) == 0, what="the hub's ack empties the queue")
            assert session.stats.hub_acked == 3 and session.stats.resent == 0
            assert session.delivery_stats()["awaiting_hub_ack"] == 0

    with ingest:
        asyncio.run(scenario())
        assert ingest.stats().acks_published >= 1
    assert stored_seqs(engine) == [1, 2, 3]


def _spawn(*, db: Path, broker: EmbeddedBroker, fleet: str, stats: Path, interval: float) -> Any:
    command = [
        sys.executable, "-m", "hub.ingest",
        "--database-url", f"sqlite:///{db}",
        "--mqtt-url", broker.url,
        "--fleet", fleet,
        "--client-id", "ingest-ack-test",
        "--no-shared",
        "--batch-size", "1000",
        "--batch-interval-s", str(interval),
        "--ack-interval-s", "0.2",
        "--stats-file", str(stats),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stats(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def test_ingest_killed_before_commit_the_device_keeps_and_resends_stored_once(
    engine: Engine, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    topics, n, stats = h.fleet_topics(), 10, tmp_path / "stats.json"
    db = tmp_path / "hub.db"

    async def scenario() -> None:
        proc = _spawn(db=db, broker=mosquitto_fresh, fleet=topics.fleet, stats=stats, interval=3600)
        try:
            await until(lambda: _stats(stats).get("connected") is True, what="worker up")
            async with device(
                mosquitto_fresh, topics, tmp_path, delivery="hub_ack", timeout_s=0.5
            ) as (session, queue):
                send(session, queue, n)
                await until(lambda: _stats(stats).get("pending", 0) >= n, what="all received")
                assert len(queue) == n
                os.kill(proc.pid, signal.SIGKILL)  # before any commit
                proc.wait(10)
                await until(lambda: session.stats.resent >= n, what="resends without an ack")
                assert len(queue) == n and stored_seqs(engine) == []
                stats.unlink()
                proc = _spawn(
                    db=db, broker=mosquitto_fresh, fleet=topics.fleet, stats=stats, interval=0.05
                )
                await until(lambda: len(queue) == 0, within=30, what="stored and acked")
            await until(lambda: _stats(stats).get("acks_published", 0) >= 1, what="ack counted")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)

    asyncio.run(scenario())
    assert stored_seqs(engine) == list(range(1, n + 1))  # each window once
    final = _stats(stats)
    assert final["duplicates"] >= n and final["rejected"] == {}, final  # the resends


def test_a_rejected_item_is_acked_and_not_sent_again(
    engine: Engine, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = h.fleet_topics()
    ingest = worker(engine, mosquitto, topics, batch_interval_s=0.05, ack_interval_s=0.1)

    async def scenario() -> None:
        async with device(mosquitto, topics, tmp_path, delivery="hub_ack", timeout_s=0.5) as (
            session,
            queue,
        ):
            send(session, queue, 1, count=2**63)  # beyond int64: rejected as malformed
            send(session, queue, 1)
            await until(lambda: len(queue) == 0, what="both handled")
            await asyncio.sleep(1.5)  # three ack timeouts
            assert session.stats.resent == 0 and session.stats.published == 2

    with ingest:
        asyncio.run(scenario())
        stats = ingest.stats()
    assert stats.rejected == {"malformed": 1} and stats.stored >= 2  # window 2 + the state
    assert stored_seqs(engine) == [2]


def test_broker_ack_mode_deletes_at_the_puback_and_ignores_acks(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = h.fleet_topics()

    async def scenario() -> None:
        async with device(mosquitto, topics, tmp_path, delivery="broker_ack") as (session, queue):
            send(session, queue, 3)
            await until(lambda: len(queue) == 0, what="deleted at the PUBACK (no hub at all)")
            assert session.stats.published == 3 and queue.awaiting() == 0
            with h.publisher(mosquitto.port) as publish:  # not subscribed: never seen
                ack = pb.DeliveryAck(device_id=DEVICE)
                ack.ranges.add(stream="telemetry", first=1, last=3)
                publish(topics.ack(DEVICE), ack.SerializeToString())
            await asyncio.sleep(0.3)
            assert session.stats.hub_acks == 0

    asyncio.run(scenario())


# Units ------------------------------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, pb.DeliveryAck]] = []

    def is_connected(self) -> bool:
        return True

    def publish(self, topic: str, payload: bytes, qos: int) -> Any:
        ack = pb.DeliveryAck()
        ack.ParseFromString(payload)
        self.sent.append((topic, ack))

        class Info:
            rc = 0

        return Info()


def test_acks_are_coalesced_per_device_and_interval() -> None:
    topics, now = Topics(fleet="f"), [100.0]
    acks = AckPublisher(topics, interval_s=0.5, clock=lambda: now[0])
    client: Any = FakeClient()
    acks.add([("a", "telemetry", s) for s in (1, 2, 3, 5)] + [("a", "feedback", 1)])
    acks.add([("b", "telemetry", 7)])
    assert acks.publish_due(client) == 2
    by_topic = {t: [(r.stream, r.first, r.last) for r in a.ranges] for t, a in client.sent}
    assert by_topic == {
        topics.ack("a"): [("telemetry", 1, 3), ("telemetry", 5, 5), ("feedback", 1, 1)],
        topics.ack("b"): [("telemetry", 7, 7)],
    }
    acks.add([("a", "telemetry", 6)])
    now[0] += 0.2
    assert acks.publish_due(client) == 0  # within the interval: wait, carry it in the next
    acks.add([("a", "telemetry", 7)])
    now[0] += 0.3
    assert acks.publish_due(client) == 1
    assert [(r.first, r.last) for r in client.sent[-1][1].ranges] == [(6, 7)]
    assert acks.published == 3 and acks.pending_devices == 0


def test_seq_is_read_from_rejected_payloads_when_it_can_be() -> None:
    topics = Topics(fleet="f")
    assert seq_of(h.window("d", 42)) == 42 and seq_of(h.feedback("d", 9)) == 9
    assert seq_of(b"") is None and seq_of(b"\xff\xff") is None
    assert seq_of(h.window("d", 4)[:-3]) is None  # truncated
    assert rejected_key(topics, topics.telemetry("d"), h.window("x", 3)) == ("d", "telemetry", 3)
    assert rejected_key(topics, topics.events("d"), h.event("d", "e")) is None
    assert rejected_key(topics, "elsewhere/d/telemetry", h.window("d", 3)) is None
    assert ranges([5, 1, 2, 2, 3, 9]) == [(1, 3), (5, 5), (9, 9)]
