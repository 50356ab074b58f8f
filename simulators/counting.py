"""What reached the broker: a counting subscriber, and the lost/duplicated tally.

:class:`StreamCounter` subscribes to a fleet's ``events``, ``telemetry`` and ``feedback``
topics (QoS 1, persistent session) and records, per device and stream, every sequence
number it received (events by ``event_id``). :func:`tally` compares that with what the
devices produced (:meth:`simulators.fleet.Fleet.expected_seqs`): the same comparison the
hub side makes against what it ingested (pass its ``(device, stream) -> seqs`` instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiomqtt

from proto import messages_pb2 as pb
from proto.topics import Topics

log = logging.getLogger("edgeloop.sim.count")

SEQ_STREAMS = ("telemetry", "feedback")
STREAMS = ("events", *SEQ_STREAMS)


@dataclass(frozen=True, kw_only=True)
class Tally:
    sent: int  # messages the devices produced (sequence numbers handed out)
    received: int  # messages that arrived, redeliveries included
    lost: int  # produced, not received, not waiting in a queue, not dropped on the device
    duplicated: int  # arrivals beyond the first of a message
    pending: int  # still in the devices' queues
    dropped_on_device: int  # evicted by a device's disk budget (reported in dropped_windows)
    by_stream: dict[str, dict[str, int]]


def tally(
    *,
    expected: Mapping[str, Mapping[str, int]],
    received: Mapping[tuple[str, str], Counter[int | str]],
    pending: Mapping[str, int] | None = None,
    dropped: Mapping[str, int] | None = None,
    streams_checked: tuple[str, ...] = STREAMS,
) -> Tally:
    """``expected``: device -> stream -> last seq produced; ``received``: (device, stream) ->
    how often each seq (events: event id) arrived. Telemetry and feedback are checked number
    by number (a gap is a loss); events, whose payload has no seq, are counted.
    ``streams_checked`` narrows the comparison (the hub's ingest stores only the seq streams)."""
    pending, dropped = pending or {}, dropped or {}
    streams: dict[str, dict[str, int]] = {
        s: {"sent": 0, "received": 0, "lost": 0, "duplicated": 0} for s in streams_checked
    }
    for device, seqs in expected.items():
        slack = pending.get(device, 0) + dropped.get(device, 0)
        for stream in streams_checked:
            last = int(seqs.get(stream, 0))
            got = received.get((device, stream), Counter())
            row = streams[stream]
            row["sent"] += last
            row["received"] += sum(got.values())
            row["duplicated"] += sum(n - 1 for n in got.values() if n > 1)
            if stream in SEQ_STREAMS:
                missing = sum(1 for q in range(1, last + 1) if q not in got)
            else:
                missing = max(0, last - len(got))
            unexplained = max(0, missing - slack)
            slack = max(0, slack - missing)
            row["lost"] += unexplained
    return Tally(
        sent=sum(r["sent"] for r in streams.values()),
        received=sum(r["received"] for r in streams.values()),
        lost=sum(r["lost"] for r in streams.values()),
        duplicated=sum(r["duplicated"] for r in streams.values()),
        pending=sum(pending.values()),
        dropped_on_device=sum(dropped.values()),
        by_stream=streams,
    )


@dataclass
class StreamCounter:
    """A counting subscriber on one fleet's device topics; keeps windows if asked."""

    host: str
    port: int
    topics: Topics
    client_id: str = field(default_factory=lambda: f"sim-counter-{uuid.uuid4().hex[:8]}")
    keep_windows: bool = False
    received: dict[tuple[str, str], Counter[int | str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    windows: dict[str, list[pb.TelemetryWindow]] = field(default_factory=lambda: defaultdict(list))
    events: dict[str, list[pb.DeploymentEvent]] = field(default_factory=lambda: defaultdict(list))
    online: dict[str, bool] = field(default_factory=dict)  # from the retained states
    labels: Counter[str] = field(default_factory=Counter)  # feedback labels, first arrivals
    malformed: int = 0
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def online_count(self, devices: list[str] | None = None) -> int:
        """Devices whose retained state says online (they have subscribed to commands)."""
        if devices is None:
            return sum(self.online.values())
        return sum(1 for d in devices if self.online.get(d, False))

    def last_event_kinds(self) -> dict[str, int]:
        """Per device, the kind of the last deployment event received."""
        return {d: events[-1].kind for d, events in self.events.items() if events}

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.received.values())

    async def __aenter__(self) -> StreamCounter:
        self._task = asyncio.create_task(self._loop())
        async with asyncio.timeout(30):
            await self.subscribed.wait()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # end the persistent session, so the broker stops queueing for a counter that is gone
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(5):
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, clean_session=True
                ):
                    pass

    async def _loop(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.client_id,
                    clean_session=False,
                    max_queued_incoming_messages=0,
                ) as client:
                    for stream in (*STREAMS, "state"):
                        await client.subscribe(self.topics.wildcard(stream), qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.take(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.info("counter connection lost (%s); reconnecting", exc)
                await asyncio.sleep(0.2)

    def take(self, topic: str, payload: bytes | bytearray) -> None:
        """Count one message; a topic or payload that is not ours is counted as malformed."""
        try:
            device, kind = self.topics.parse(topic)
            data = bytes(payload)
            key: int | str
            if kind == "telemetry":
                window = pb.TelemetryWindow.FromString(data)
                key = window.seq
                if self.keep_windows:
                    self.windows[device].append(window)
            elif kind == "feedback":
                feedback = pb.Feedback.FromString(data)
                key = feedback.seq
                if key not in self.received[(device, "feedback")]:
                    self.labels[device] += len(feedback.labels)
            elif kind == "events":
                event = pb.DeploymentEvent.FromString(data)
                key = event.event_id
                if key not in self.received[(device, "events")]:  # QoS 1 may deliver twice
                    self.events[device].append(event)
            elif kind == "state":
                self.online[device] = pb.AgentState.FromString(data).online
                return
            else:
                return
        except Exception as exc:
            self.malformed += 1
            log.warning("uncountable message on %s: %s", topic, exc)
            return
        self.received[(device, str(kind))][key] += 1


def stored_seqs(streams: list[Mapping[str, object]]) -> dict[tuple[str, str], Counter[int | str]]:
    """The hub's ``GET /ingest/stats`` ``streams`` rows (max_seq, missing ranges) as the
    ``received`` argument of :func:`tally`: each stored seq once (the hub dedupes)."""
    out: dict[tuple[str, str], Counter[int | str]] = {}
    for row in streams:
        top = int(str(row["max_seq"]))
        missing: set[int] = set()
        for first, last in row.get("missing", []) or []:  # type: ignore[attr-defined]
            missing.update(range(int(first), int(last) + 1))
        out[(str(row["device_id"]), str(row["stream"]))] = Counter(
            q for q in range(1, top + 1) if q not in missing
        )
    return out
