"""The device's MQTT session: one long-lived, persistent connection that never gives up.

Stable client id, persistent session (clean session off / clean start off with a session
expiry), QoS 1 everywhere, last will marking the device offline on its retained state
topic. Reconnects with jittered, capped exponential backoff. Everything the device must
deliver goes through the durable outbound queue and leaves it only after the broker's
PUBACK, so a broker away for hours or an agent restart loses nothing.

With ``delivery = "hub_ack"`` telemetry, feedback and deployment events leave it only when
the hub's ``DeliveryAck`` (``devices/<id>/ack``) covers their seq: after the PUBACK an item
is "sent, awaiting the hub" and is sent again when no ack came within the adaptive timeout
(:class:`edge_agent.AckTimeout`: the hub's measured ack latency, at least
``hub_ack_timeout_s``, backing off while the hub is behind) and on every reconnect, so what
a broker crash loses after its PUBACK still reaches the hub (which drops repeats by seq,
events by event_id).

A broker that refuses the login (CONNACK "not authorized" / "bad user name or password": the
device is not enrolled, or its login was revoked) is not a network fault: the session logs
one error that says how to enrol (:func:`login_refused_hint`), counts it in
``SessionStats.login_refused`` and tries again on a slower backoff of its own, repeating the
hint only every :data:`HINT_EVERY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent._acktimeout import AckTimeout
from edge_agent._fetch import Backoff
from edge_agent._tls import mqtt_tls_params
from edge_agent.queue import OutboundQueue, QueuedItem
from edge_agent.settings import DEFAULT_DATA_DIR, ENROLLMENT_FILE, AgentSettings, shown_url
from proto import messages_pb2 as pb
from proto.topics import Topics

log = logging.getLogger("edgeloop.agent.mqtt")

DRAIN_BATCH = 20
# An idle queue is looked at again after this long even without a wake-up (a safety net:
# every append wakes the drain, and resends are timed to the oldest item awaiting an ack).
IDLE_RECHECK_S = 30.0
STREAMS = ("events", "telemetry", "feedback")
_MAX_SEQ = 2**63 - 1  # SQLite INTEGER: a larger seq cannot name a queued item
# CONNACK refusals of the login: MQTT 5 reason codes (paho reports v3.1.1's return codes 4
# and 5 as these too) and the v3.1.1 codes themselves, in case a client reports them raw.
LOGIN_REFUSED_CODES = frozenset({134, 135})  # bad user name or password, not authorized
LOGIN_REFUSED_V3 = frozenset({4, 5})
LOGIN_RETRY_INITIAL_S = 1.0  # a refused login: the first retry, doubling up to
LOGIN_RETRY_CAP_S = 120.0  # this (nothing changes until someone enrols the device)
HINT_EVERY_S = 600.0  # a still-refused login repeats the hint this rarely


@dataclass
class SessionStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    commands: int = 0
    resent: int = 0  # items published again (no hub ack in time, or a reconnect)
    hub_acks: int = 0  # DeliveryAck messages received
    hub_acked: int = 0  # queued items those acks removed
    malformed_acks: int = 0  # DeliveryAck payloads that did not parse or named nothing valid
    timeout_rounds: int = 0  # rounds of items sent again for want of a hub ack in time
    ack_timeout_s: float = 0.0  # the hub-ack timeout now (AckTimeout.seconds)
    errors: int = 0  # unexpected errors that ended a connection (it reconnects)
    login_refused: int = 0  # connects the broker refused for the login (not enrolled, revoked)
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
        self._loop: asyncio.AbstractEventLoop | None = None  # run()'s, for wake() from threads
        self._state_dirty = asyncio.Event()
        self._hub_ack = settings.delivery == "hub_ack"
        self._ack_topic = topics.ack(settings.device_id)
        self._connected_at = 0.0  # wall clock: items sent before it are due again
        self._commands: asyncio.Queue[bytes] = asyncio.Queue()  # made anew by run()
        self.stats = SessionStats()
        self._ack_timeout = AckTimeout(
            floor_s=settings.hub_ack_timeout_s,
            max_s=max(settings.hub_ack_timeout_s, settings.hub_ack_max_timeout_s),
        )
        self._backed_off_at = 0.0  # wall clock of the last timed-out round (one per timeout)
        self.stats.ack_timeout_s = self._ack_timeout.seconds
        self._topic_for = {
            "events": topics.events(settings.device_id),
            "telemetry": topics.telemetry(settings.device_id),
            "feedback": topics.feedback(settings.device_id),
        }

    def wake(self) -> None:
        """Something new is queued (callable from any thread)."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or loop.is_closed():
            self._wake.set()
        else:  # an asyncio.Event is not thread-safe: set it from its own loop
            loop.call_soon_threadsafe(self._wake.set)

    def state_changed(self) -> None:
        self._state_dirty.set()

    def delivery_stats(self) -> dict[str, object]:
        """Counters for the local health endpoint and tests."""
        return {
            "delivery": self._settings.delivery,
            "queued": len(self._queue),
            "awaiting_hub_ack": self._queue.awaiting() if self._hub_ack else 0,
            "published": self.stats.published,
            "resent": self.stats.resent,
            "hub_acks": self.stats.hub_acks,
            "hub_acked": self.stats.hub_acked,
            "malformed_acks": self.stats.malformed_acks,
        }

    def connection_stats(self) -> dict[str, object]:
        """The broker connection, for the local health endpoint: whether it is up, and how
        many connects the broker refused for the login (see :func:`login_refused_hint`)."""
        return {
            "connected": self.stats.connected,
            "connects": self.stats.connects,
            "login_refused": self.stats.login_refused,
            "last_error": self.stats.last_error,
        }

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
            "tls_params": mqtt_tls_params(
                s.mqtt_url,
                ca_file=s.ca_file,
                client_cert=s.client_cert_file,
                client_key=s.client_key_file,
            ),
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
        # Commands run in a task of their own that outlives connections: a deploy under way
        # when the broker goes away goes on (it used to be cancelled with the receive task,
        # after its command was acked, so it never finished: stuck at e.g. VERIFIED).
        self._commands = asyncio.Queue()  # of this run's event loop
        self._loop = asyncio.get_running_loop()
        handler = asyncio.create_task(self._handle_commands(), name="agent-commands")
        try:
            await self._stay_connected(stop, backoff, delays)
        finally:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)

    async def _stay_connected(
        self, stop: asyncio.Event, backoff: Backoff, delays: Iterator[float]
    ) -> None:
        refusals = Backoff(
            initial=max(LOGIN_RETRY_INITIAL_S, self._settings.reconnect_initial_s),
            cap=max(LOGIN_RETRY_CAP_S, self._settings.reconnect_max_s),
        )
        refused_delays: Iterator[float] | None = None  # while the login is refused
        refused_in_a_row, hinted_at = 0, -HINT_EVERY_S
        while not stop.is_set():
            refused = False
            try:
                async with self._client() as client:
                    self.stats.connects += 1
                    self.stats.connected = True
                    delays, refused_delays, refused_in_a_row = backoff.delays(), None, 0
                    log.info("connected to %s", shown_url(self._settings.mqtt_url))
                    await self._connected(client, stop)
            except MqttConnectError as exc:
                self.stats.last_error = str(exc)
                if not login_refused(exc):
                    log.warning("MQTT connection refused: %s", exc)
                else:
                    refused = True
                    self.stats.login_refused += 1
                    refused_in_a_row += 1
                    refused_delays = refused_delays or refusals.delays()
                    # one refusal may be transient (a broker re-reading its login files as
                    # another device enrols): the hint comes at the second in a row
                    now = time.monotonic()
                    if refused_in_a_row >= 2 and now - hinted_at >= HINT_EVERY_S:
                        hinted_at = now
                        log.error("%s", login_refused_hint(self._settings, str(exc)))
                    else:
                        log.info("the broker refused the login (%s); trying again", exc)
            except aiomqtt.MqttError as exc:
                self.stats.last_error = str(exc)
                log.warning("MQTT connection lost or refused: %s", exc)
            except Exception as exc:  # a bug or a full disk: never end the session for good
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("MQTT session error; reconnecting")
            finally:
                if self.stats.connected:
                    self.stats.disconnects += 1
                self.stats.connected = False
            if stop.is_set():
                break
            wait = next(refused_delays) if refused and refused_delays else next(delays)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()

    async def _connected(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        no_delay(client)
        device = self._settings.device_id
        self._connected_at = time.time()
        await client.subscribe(self._topics.command(device), qos=1)
        if self._hub_ack:
            await client.subscribe(self._ack_topic, qos=1)
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
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                log.warning("ignoring a non-binary payload on %s", message.topic)
                continue
            if message.topic.value == self._ack_topic:
                self._on_hub_ack(bytes(payload))
                continue
            self.stats.commands += 1
            self._commands.put_nowait(bytes(payload))

    async def _handle_commands(self) -> None:
        """One command at a time, in arrival order, across reconnects."""
        while True:
            payload = await self._commands.get()
            try:
                await self._on_command(payload)
            except Exception:  # one bad command never stops the session
                log.exception("command handler failed")

    def _on_hub_ack(self, payload: bytes) -> None:
        ack = pb.DeliveryAck()
        try:
            ack.ParseFromString(payload)
        except Exception:  # DecodeError, bad UTF-8: nothing to act on
            self.stats.malformed_acks += 1
            log.warning("ignoring a malformed delivery ack (%d bytes)", len(payload))
            return
        if ack.device_id != self._settings.device_id:
            self.stats.malformed_acks += 1
            log.warning("ignoring a delivery ack for %r", ack.device_id)
            return
        valid = [r for r in ack.ranges if r.stream in STREAMS and 0 < r.first <= r.last <= _MAX_SEQ]
        if len(valid) != len(ack.ranges):
            self.stats.malformed_acks += 1
            log.warning(
                "ignoring %d invalid range(s) of a delivery ack", len(ack.ranges) - len(valid)
            )
        self.stats.hub_acks += 1
        now = time.time()
        oldest_once: float | None = None
        for r in valid:
            acked = self._queue.ack_range(r.stream, r.first, r.last)
            self.stats.hub_acked += acked.count
            if acked.sent_once_at:
                first = min(acked.sent_once_at)
                oldest_once = first if oldest_once is None else min(oldest_once, first)
        if oldest_once is not None:  # one sample per ack: its longest wait (conservative)
            self._ack_timeout.sample(now - oldest_once)
            self.stats.ack_timeout_s = self._ack_timeout.seconds

    def _due(self) -> list[QueuedItem]:
        if not self._hub_ack:
            return self._queue.peek(limit=DRAIN_BATCH)
        now = time.time()
        timeout = self._ack_timeout.seconds
        items = self._queue.peek(
            limit=DRAIN_BATCH, sent_before=max(self._connected_at, now - timeout)
        )
        timed_out = any(
            item.sent_at is not None and item.sent_at >= self._connected_at for item in items
        )
        if timed_out and now - self._backed_off_at >= timeout:  # once per timeout, not batch
            self._backed_off_at = now
            self._ack_timeout.timed_out()
            self.stats.timeout_rounds += 1
            self.stats.ack_timeout_s = self._ack_timeout.seconds
        return items

    def _idle_wait_s(self) -> float:
        """How long an empty drain may sleep: until the oldest item awaiting the hub's ack is
        due again (hub_ack), else :data:`IDLE_RECHECK_S`; an append wakes it sooner."""
        if not self._hub_ack:
            return IDLE_RECHECK_S
        oldest = self._queue.oldest_sent_at()
        if oldest is None:
            return IDLE_RECHECK_S
        due_in = oldest + self._ack_timeout.seconds - time.time()
        return min(max(due_in, 0.05), IDLE_RECHECK_S)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()  # before looking: an append from now on wakes the next wait
            items = self._due()
            if not items:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_wait_s()):
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
        if self._hub_ack:
            self._queue.mark_sent(item.id)  # stays until the hub's DeliveryAck covers it
        else:
            self._queue.ack(item.id)
        self.stats.published += 1
        if item.sent_at is not None:
            self.stats.resent += 1


def login_refused(exc: MqttConnectError) -> bool:
    """Whether the broker refused the connect for the login (not for being unavailable)."""
    rc = exc.rc
    if isinstance(rc, int):
        return rc in LOGIN_REFUSED_V3 or rc in LOGIN_REFUSED_CODES
    value = getattr(rc, "value", None)
    return isinstance(value, int) and value in LOGIN_REFUSED_CODES


def login_refused_hint(settings: AgentSettings, reason: str) -> str:
    """What a refused login means and the commands that fix it (enrol), for this device."""
    device, host = settings.device_id, settings.mqtt_host
    default_dir = DEFAULT_DATA_DIR.expanduser().resolve()
    agent_dir = "" if settings.data_dir == default_dir else f" --agent-dir {settings.data_dir}"
    stored = settings.device_dir / ENROLLMENT_FILE
    grpc, hub_url = f"{host}:50051", f"http://{host}:8000"  # a hub on its default ports
    enroll = f"edgeloop agent enroll --device-id {device}{agent_dir} --token TOKEN --grpc {grpc}"
    if settings.mqtt_username is None:
        why = f"device {device} has no login: it is not enrolled (no {stored})"
        then = (
            f"restart this agent with `edgeloop agent run --device-id {device}{agent_dir} "
            f"--enroll-token TOKEN --grpc {grpc}` (or run `{enroll}` first)"
        )
    else:
        why = (
            f"the login of device {device} (from {stored} or EDGELOOP_AGENT_MQTT_*) was "
            "refused: revoked, or made by another hub"
        )
        then = f"run `{enroll}` (it replaces the stored login) and restart this agent"
    return (
        f"the broker at {shown_url(settings.mqtt_url)} refused the login ({reason}): {why}. "
        f"To enrol: on the hub, `edgeloop --hub {hub_url} device token create` prints a "
        f"one-time token; then {then}. Trying again every {LOGIN_RETRY_CAP_S:g} s at most."
    )


def no_delay(client: aiomqtt.Client) -> None:
    """Turn off Nagle on the client's socket (paho leaves it on): a PUBACK followed by the
    next small publish would otherwise wait for the broker's delayed ACK (~40 ms a time)."""
    with contextlib.suppress(AttributeError, OSError):
        sock = client._client.socket()
        if isinstance(sock, socket.socket):  # TLS too; not a websocket wrapper
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
