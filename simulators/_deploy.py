"""How :class:`~simulators.fleet.Fleet` publishes ``Deploy`` commands, as the hub does: one
control MQTT client, commands in chunks awaited together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

import aiomqtt

from proto import messages_pb2 as pb
from proto.topics import Topics

#: Deploy commands published together (and allowed in flight) by the control client.
DEPLOY_CHUNK = 200

Credentials = Callable[[str], tuple[str, str] | None]


def control_client(mqtt_url: str, credentials: Credentials | None) -> aiomqtt.Client:
    """The fleet's control client (``sim-control-<random>``, the ``sim-control`` login)."""
    parsed = urlparse(mqtt_url)
    creds = credentials("sim-control") if credentials else None
    client = aiomqtt.Client(
        parsed.hostname or "127.0.0.1",
        parsed.port or 1883,
        identifier=f"sim-control-{uuid.uuid4().hex[:8]}",
        username=creds[0] if creds else None,
        password=creds[1] if creds else None,
        max_inflight_messages=DEPLOY_CHUNK,
    )
    # a chunk in flight is by design: no "There are N pending publish calls" per publish
    client.pending_calls_threshold = DEPLOY_CHUNK
    return client


async def publish_commands(
    client: aiomqtt.Client, topics: Topics, commands: Sequence[tuple[str, pb.Command]]
) -> dict[str, str]:
    """Publish each (device id, command) at QoS 1; returns device -> command id."""
    sent: dict[str, str] = {}
    # in chunks, each awaited together: one PUBACK at a time would wait a whole pass
    # of a busy event loop per device (thousands of agents share it)
    for start in range(0, len(commands), DEPLOY_CHUNK):
        chunk = commands[start : start + DEPLOY_CHUNK]
        await asyncio.gather(
            *(client.publish(topics.command(i), c.SerializeToString(), qos=1) for i, c in chunk)
        )
        sent.update((i, c.command_id) for i, c in chunk)
    return sent
