"""The agent's MQTT session and durable queue on a real broker, without the rest of the agent
(for delivery-ack tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from edge_agent._session import MqttSession
from edge_agent.queue import OutboundQueue
from edge_agent.settings import AgentSettings
from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from proto.topics import Topics

DEVICE = "ack-1"


async def until(check: Callable[[], bool], *, within: float = 20.0, what: str) -> None:
    """Poll ``check`` (an upper bound for safety, never a measurement)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def device(
    broker: EmbeddedBroker, topics: Topics, tmp: Path, *, delivery: str, timeout_s: float = 30.0
) -> AsyncIterator[tuple[MqttSession, OutboundQueue]]:
    """The agent's MQTT session and queue, without the rest of the agent."""
    key = tmp / "hub.pub"
    key.write_text("00" * 32)
    settings = AgentSettings(
        device_id=DEVICE,
        data_dir=tmp / "agent",
        mqtt_url=broker.url,
        public_key=key,
        fleet=topics.fleet,
        delivery=delivery,
        hub_ack_timeout_s=timeout_s,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.5,
    )
    queue = OutboundQueue(tmp / "outbound.db")

    async def on_command(_payload: bytes) -> None:
        return None

    session = MqttSession(
        settings=settings,
        topics=topics,
        queue=queue,
        on_command=on_command,
        state=lambda online: pb.AgentState(device_id=DEVICE, online=online).SerializeToString(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(session.run(stop))
    try:
        await until(lambda: session.stats.connected, what="the device connected")
        yield session, queue
    finally:
        stop.set()
        await task
        queue.close()
