"""Fault: the agent's queue is full (its byte budget, ``queue_max_bytes``, standing in for a
full disk) while the broker is away.

Expected: the agent keeps serving predictions; the oldest telemetry windows are dropped,
deployment events never are; the queue stays within its budget; windows that reach the hub
carry ``dropped_windows``, and the hub's ``gaps`` report shows exactly the dropped seqs as
missing, and the windows' ``dropped_windows`` (plus what the next window will report) add
up to exactly the drops.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from edge_agent.agent import Agent
from hub.core.db import make_engine
from hub.ingest import IngestWorker
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import DeploymentEventRow, create_all
from proto import messages_pb2 as pb
from tests.agent.harness import Observer
from tests.faults._telemetry import (
    DIGITS,
    agent_settings,
    register,
    serve_v1,
    stored,
    table,
)
from tests.faults._world import FaultHub, wait_for

DEVICE = "qf-1"
BUDGET = 24 * 1024  # a handful of ~3 KB windows


def test_full_queue_drops_oldest_telemetry_keeps_events_and_serving(
    fault_hub: FaultHub, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    register(engine, DEVICE)
    ingest = IngestWorker(
        engine=engine,
        mqtt_url=mosquitto_fresh.url,
        client_id="ingest-qf",
        batch_interval_s=0.05,
        shared=False,  # see test_broker_kill: $share loses what is sent before it is back
    )
    settings = agent_settings(
        device_id=DEVICE,
        broker=mosquitto_fresh,
        hub=fault_hub,
        tmp=tmp_path,
        queue_max_bytes=BUDGET,
    )
    agent = Agent(settings=settings)
    offline_events = [f"offline-{i}" for i in range(3)]

    async def scenario() -> None:
        async with Observer(broker_port=mosquitto_fresh.port).running() as obs:
            await serve_v1(obs, agent, fault_hub)
        mosquitto_fresh.stop()
        for i in range(200):  # ~40 windows, far over the budget
            assert agent.predict(DIGITS[i % 100 : i % 100 + 1]).version  # still serving
            if i % 70 == 0:  # deployment events queued in between, never droppable
                agent.enqueue_event(
                    pb.DeploymentEvent(
                        event_id=offline_events[i // 70],
                        device_id=DEVICE,
                        command_id="offline-cmd",
                        kind=pb.EVENT_KIND_RECEIVED,
                    )
                )
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        assert agent.queue.dropped("telemetry") > 0
        assert agent.queue.dropped("events") == 0
        assert agent.queue.size_bytes() <= BUDGET
        mosquitto_fresh.start()
        agent.predict(DIGITS[:1])
        agent.flush()  # one more window, carrying the drop count
        await asyncio.to_thread(
            wait_for, lambda: len(agent.queue) == 0, within=30, what="the queue drains"
        )

    async def main() -> None:
        async with agent:
            await scenario()

    with ingest:
        asyncio.run(main())
        produced = agent.queue.last_seqs()["telemetry"]
        dropped = agent.queue.dropped("telemetry")
        pending_report = agent.queue.unreported("telemetry")

        def all_there() -> bool:
            ingest.flush()
            return max(stored(engine, DEVICE).seqs, default=0) >= produced

        wait_for(all_there, within=15, what="the last window in the hub DB")
    result = stored(engine, DEVICE)
    t = table(DeploymentEventRow)
    with engine.connect() as conn:
        events = {r[0] for r in conn.execute(select(t.c.event_id).where(t.c.device_id == DEVICE))}
    engine.dispose()
    assert set(offline_events) <= events  # no event dropped
    assert len(result.seqs) == produced - dropped  # every window not dropped arrived, once
    assert len(set(result.seqs)) == len(result.seqs)
    assert result.missing == dropped  # gaps shows exactly the dropped seqs as missing
    # Every drop is reported exactly once: a window that carried a drop count and was evicted
    # in its turn hands its count on to the next window (``items.carries``); drops caused by
    # the last window's own append wait for the window after it.
    assert result.dropped_windows + pending_report == dropped
    print(f"windows {produced}, dropped {dropped} (reported {result.dropped_windows})")
