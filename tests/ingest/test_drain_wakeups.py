"""The agent's queue drain sleeps until something is appended (from any thread) or until the
oldest item awaiting the hub's ack is due again — no per-second polling. Real Mosquitto, the
agent's real MQTT session and queue. Each bound below is far under the idle re-check
(``IDLE_RECHECK_S``), so a missed wake-up fails the test."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from edge_agent._session import IDLE_RECHECK_S
from hub.mqtt.broker import EmbeddedBroker
from tests.ingest import helpers as h
from tests.ingest.test_delivery_acks import device, send, until

WITHIN = 5.0
assert IDLE_RECHECK_S > 4 * WITHIN


def test_an_append_from_another_thread_is_sent_at_once(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = h.fleet_topics()

    async def scenario() -> None:
        async with device(mosquitto, topics, tmp_path, delivery="broker_ack") as (session, queue):
            await asyncio.sleep(0.3)  # the drain has found nothing and sleeps
            writer = threading.Thread(target=send, args=(session, queue, 2))
            writer.start()
            writer.join()
            await until(lambda: session.stats.published == 2, within=WITHIN, what="2 sent")
            assert len(queue) == 0

    asyncio.run(scenario())


def test_an_unacked_item_is_resent_when_its_ack_timeout_passes(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = h.fleet_topics()  # no ingest worker: no ack ever comes

    async def scenario() -> None:
        async with device(mosquitto, topics, tmp_path, delivery="hub_ack", timeout_s=0.5) as (
            session,
            queue,
        ):
            send(session, queue, 1)
            await until(lambda: session.stats.published == 1, within=WITHIN, what="sent")
            assert queue.oldest_sent_at() is not None
            await until(lambda: session.stats.resent >= 2, within=WITHIN, what="2 resends")
            assert len(queue) == 1 and queue.awaiting() == 1

    asyncio.run(scenario())
