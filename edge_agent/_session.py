"""The device's MQTT session: one long-lived, persistent connection that never gives up.

Stable client id, persistent session (clean session off / clean start off with a session
expiry), QoS 1 everywhere, last will marking the device offline on its retained state
topic. Reconnects with jittered, capped exponential backoff. Everything the device must
deliver goes through the durable outbound queue and leaves it only after the broker's
PUBACK, so a broker away for hours or an agent restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent._fetch import Backoff
from edge_agent._queue import OutboundQueue, QueuedItem
from edge_agent._tls import mqtt_tls_params
from edge_agent.settings import AgentSettings
from proto.topics import Topics

log = logging.getLogger("edgeloop.agent.mqtt")

DRAIN_BATCH = 20
STREAMS = ("events", "telemetry", "feedback")


@dataclass
class SessionStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    commands: int = 0
    last_error: str = ""
    connected: bool = field(default=False)


class MqttSession:
    """Connects, keeps the retained state current, receives commands, drains the queue."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        topics: Topics,
        queue: OutboundQueue,
        on_command: Callable[[bytes], Awaitable[None]],
        state: Callable[[bool], bytes],
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._queue = queue
        self._on_command = on_command
        self._state = state
        self._wake = asyncio.Event()
        self._state_dirty = asyncio.Event()
        self.stats = SessionStats()
        self._topic_for = {
            "events": topics.events(settings.device_id),
            "telemetry": topics.telemetry(settings.device_id),
            "feedback": topics.feedback(settings.device_id),
        }

    def wake(self) -> None:
        """Something new is queued."""
        self._wake.set()

    def state_changed(self) -> None:
        self._state_dirty.set()

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        will = aiomqtt.Will(
            topic=self._topics.state(s.device_id), payload=self._state(False), qos=1, retain=True
        )
        common = {
            "hostname": s.mqtt_host,
            "port": s.mqtt_port,
            "identifier": s.device_id,
            "username": s.mqtt_username,
            "password": s.mqtt_password.get_secret_value() if s.mqtt_password else None,
            "will": will,
            "keepalive": s.keepalive_s,
            "timeout": 10.0,
            "tls_params": mqtt_tls_params(s.mqtt_url, ca_file=s.ca_file),
        }
        if s.mqtt_protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            return aiomqtt.Client(
                **common,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
            )
        return aiomqtt.Client(
            **common,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; never raises for network trouble."""
        backoff = Backoff(
            initial=self._settings.reconnect_initial_s, cap=self._settings.reconnect_max_s
        )
        delays = backoff.delays()
        while not stop.is_set():
            try:
                async with self._client() as client:
                    self.stats.connects += 1
                    self.stats.connected = True
                    delays = backoff.delays()
                    log.info("connected to %s", self._settings.mqtt_url)
                    await self._connected(client, stop)
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
                log.warning("MQTT connection lost or refused: %s", exc)
            finally:
                if self.stats.connected:
                    self.stats.disconnects += 1
                self.stats.connected = False
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next(delays)):
                    await stop.wait()

    async def _connected(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        no_delay(client)
        device = self._settings.device_id
        await client.subscribe(self._topics.command(device), qos=1)
        await self._publish_state(client, online=True)
        tasks = [
            asyncio.create_task(self._receive(client)),
            asyncio.create_task(self._drain(client)),
            asyncio.create_task(self._states(client)),
            asyncio.create_task(stop.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if stop.is_set():  # clean shutdown: say so on the retained state
            with contextlib.suppress(aiomqtt.MqttError):
                await self._publish_state(client, online=False)

    async def _publish_state(self, client: aiomqtt.Client, *, online: bool) -> None:
        self._state_dirty.clear()
        topic = self._topics.state(self._settings.device_id)
        await client.publish(topic, self._state(online), qos=1, retain=True)

    async def _states(self, client: aiomqtt.Client) -> None:
        while True:
            await self._state_dirty.wait()
            await self._publish_state(client, online=True)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.stats.commands += 1
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                log.warning("ignoring a non-binary command payload on %s", message.topic)
                continue
            try:
                await self._on_command(bytes(payload))
            except Exception:  # one bad command never stops the session
                log.exception("command handler failed")

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            items = self._queue.peek(limit=DRAIN_BATCH)
            if not items:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                continue
            await asyncio.gather(*(self._send(client, item) for item in items))

    async def _send(self, client: aiomqtt.Client, item: QueuedItem) -> None:
        topic = self._topic_for.get(item.stream)
        if topic is None:
            log.error("dropping queued item %s of unknown stream %r", item.id, item.stream)
            self._queue.ack(item.id)
            return
        await client.publish(topic, item.payload, qos=1)  # returns after the broker's PUBACK
        self._queue.ack(item.id)
        self.stats.published += 1


def no_delay(client: aiomqtt.Client) -> None:
    """Turn off Nagle on the client's socket (paho leaves it on): a PUBACK followed by the
    next small publish would otherwise wait for the broker's delayed ACK (~40 ms a time)."""
    with contextlib.suppress(AttributeError, OSError):
        sock = client._client.socket()
        if isinstance(sock, socket.socket):  # TLS too; not a websocket wrapper
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
