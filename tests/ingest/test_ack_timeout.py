"""The hub-ack retransmission timer (:class:`edge_agent.AckTimeout`, issue #20): repeats adapt
to the hub's measured ack latency and back off while no ack comes, instead of a fixed 30 s
that turned a hub running behind into a storm of repeats. Units, then the agent's real MQTT
session and queue on a real Mosquitto with a "hub" that acks late or never."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import aiomqtt
import pytest

from edge_agent import AckTimeout
from edge_agent.queue import OutboundQueue
from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from tests.ingest import helpers as h
from tests.ingest._device import DEVICE, device, until
from tests.ingest.test_delivery_acks import send

# Units ------------------------------------------------------------------------------------


def test_the_timer_follows_rfc6298_above_its_floor_and_below_its_cap() -> None:
    timer = AckTimeout(floor_s=2.0, max_s=100.0)
    assert timer.seconds == 2.0  # no sample yet: the configured timeout
    timer.sample(0.1)  # a fast hub: srtt 0.1, rttvar 0.05 -> 0.3, held at the floor
    assert timer.seconds == 2.0
    timer.sample(10.0)  # a slow ack: rttvar 0.25*9.9 + 0.75*0.05, srtt 0.875*0.1 + 1.25
    assert timer.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 10.0)
    assert timer.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 9.9)
    assert timer.srtt is not None
    assert timer.seconds == pytest.approx(timer.srtt + 4 * timer.rttvar)
    for _ in range(50):
        timer.sample(240.0)  # a hub four minutes behind: the timer waits for it, up to max_s
    assert timer.seconds == 100.0


def test_each_timed_out_round_doubles_the_timer_until_a_fresh_sample() -> None:
    timer = AckTimeout(floor_s=1.0, max_s=60.0)
    seen = []
    for _ in range(8):
        timer.timed_out()
        seen.append(timer.seconds)
    assert seen == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    timer.sample(0.2)  # srtt 0.2 + 4 * 0.1 < the floor
    assert timer.doublings == 0 and timer.seconds == 1.0


def test_acks_report_when_items_sent_exactly_once_were_sent(tmp_path: Path) -> None:
    clock = iter(float(t) for t in range(100, 200))
    with OutboundQueue(tmp_path / "q.db", clock=lambda: next(clock)) as queue:
        items = [
            queue.append(stream="telemetry", payload_for=lambda s: b"x%d" % s) for _ in range(3)
        ]
        queue.mark_sent(items[0].id)
        queue.mark_sent(items[1].id)
        queue.mark_sent(items[1].id)  # sent twice: its ack is ambiguous (Karn), no sample
        acked = queue.ack_range("telemetry", 1, 3)
    assert acked.count == 3
    assert len(acked.sent_once_at) == 1  # item 3 was never sent, item 2 twice


def test_a_queue_file_from_before_gets_the_sends_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,"
        " seq INTEGER NOT NULL, payload BLOB NOT NULL, created_at REAL NOT NULL,"
        " carries INTEGER NOT NULL DEFAULT 0, sent_at REAL, UNIQUE (stream, seq));"
        "INSERT INTO items (stream, seq, payload, created_at, sent_at)"
        " VALUES ('telemetry', 1, x'00', 1.0, 2.0);"
    )
    conn.commit()
    conn.close()
    with OutboundQueue(path) as queue:
        acked = queue.ack_range("telemetry", 1, 1)
    # sent before the column existed: the count of sends is unknown (0), so no sample
    assert acked.count == 1 and acked.sent_once_at == ()


# The real session -------------------------------------------------------------------------


def test_no_ack_at_all_backs_off_instead_of_repeating_every_timeout(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = h.fleet_topics()  # no ingest worker: no ack ever comes

    async def scenario() -> None:
        async with device(mosquitto, topics, tmp_path, delivery="hub_ack", timeout_s=0.15) as (
            session,
            queue,
        ):
            send(session, queue, 1)
            await until(lambda: session.stats.published == 1, what="sent")
            await asyncio.sleep(2.5)
            # fixed 0.15 s: ~16 repeats in 2.5 s; doubling from 0.15: at 0.15, 0.45, 1.05, 2.25
            assert 2 <= session.stats.resent <= 5, session.stats
            assert session.stats.timeout_rounds == session.stats.resent
            assert session.stats.ack_timeout_s >= 1.2
            assert len(queue) == 1  # nothing is given up

    asyncio.run(scenario())


def test_a_hub_that_acks_late_gets_no_repeats_once_its_latency_is_measured(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = h.fleet_topics()
    late_s = 0.4

    async def slow_hub(ready: asyncio.Event) -> None:
        """Acks each telemetry seq ``late_s`` after it first saw it (a hub running behind)."""
        first_seen: set[int] = set()
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="slow-hub") as client:
            await client.subscribe(topics.telemetry(DEVICE), qos=1)
            ready.set()
            async for message in client.messages:
                window = pb.TelemetryWindow()
                window.ParseFromString(bytes(message.payload))
                if window.seq in first_seen:
                    continue
                first_seen.add(window.seq)

                async def ack_later(seq: int) -> None:
                    await asyncio.sleep(late_s)
                    ack = pb.DeliveryAck(device_id=DEVICE)
                    ack.ranges.add(stream="telemetry", first=seq, last=seq)
                    await client.publish(topics.ack(DEVICE), ack.SerializeToString(), qos=1)

                asyncio.get_running_loop().create_task(ack_later(window.seq))

    async def scenario() -> None:
        ready = asyncio.Event()
        hub = asyncio.create_task(slow_hub(ready))
        await until(ready.is_set, what="the slow hub subscribed")
        try:
            async with device(mosquitto, topics, tmp_path, delivery="hub_ack", timeout_s=0.2) as (
                session,
                queue,
            ):
                # warm-up: the first items are repeated (0.2 s < 0.6 s) until an item sent
                # once is acked and the timer learns the hub's latency
                for _ in range(3):
                    send(session, queue, 1)
                    await asyncio.sleep(late_s + 0.3)
                warm = session.stats.resent
                assert session.stats.ack_timeout_s > late_s, session.stats
                for _ in range(6):
                    send(session, queue, 1)
                    await asyncio.sleep(0.3)
                await until(lambda: len(queue) == 0, what="all acked")
                assert session.stats.resent == warm, session.stats  # none after warm-up
        finally:
            hub.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hub

    asyncio.run(scenario())
