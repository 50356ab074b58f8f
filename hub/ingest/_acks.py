"""Delivery acks from the hub to devices: what the ingest worker has handled, per device.

After a batch commits, the worker hands this module the ``(device, stream, seq)`` of every
telemetry, feedback and (numbered) deployment-event message in it: stored, a repeat of a
stored one, or permanently rejected (so a rejected message never loops). :class:`AckPublisher`
coalesces them and publishes at most one ``DeliveryAck`` per device per ``interval_s`` on
``devices/<id>/ack`` (QoS 1), carrying everything handled since the previous one as
inclusive seq ranges. Agents with ``delivery = "hub_ack"`` delete a queued item only when an
ack covers it (docs/PROTOCOL.md, "Delivery acks").

Publishing never blocks and never raises into the ingest loop: paho queues the PUBLISH in
memory; while the client is disconnected nothing is published and the acks wait (an agent
whose ack is lost sends the item again after its ``hub_ack_timeout_s``; the repeat is a
duplicate, acked again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt

from hub.ingest._decode import Rejected, parse_topic
from proto import messages_pb2 as pb
from proto.topics import TopicKind, Topics

log = logging.getLogger("edgeloop.ingest.acks")

ACKED_KINDS = frozenset({TopicKind.TELEMETRY, TopicKind.FEEDBACK, TopicKind.EVENTS})
# where each kind's seq is: TelemetryWindow.seq, Feedback.seq, DeploymentEvent.seq
SEQ_FIELD = {TopicKind.TELEMETRY: 2, TopicKind.FEEDBACK: 2, TopicKind.EVENTS: 11}
AckKey = tuple[str, str, int]  # (device id, stream, seq)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError on a truncated payload
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def seq_of(payload: bytes, field_number: int = 2) -> int | None:
    """The ``seq`` (a varint field, 2 in TelemetryWindow and Feedback) of a payload, read
    from the wire format without decoding the rest; None when there is none (or 0) or the
    bytes are not protobuf. For rejected messages only: the hot path has the item's seq."""
    seq: int | None = None
    pos, end = 0, len(payload)
    try:
        while pos < end:
            key, pos = _varint(payload, pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _varint(payload, pos)
                if field == field_number:
                    seq = value  # the last one wins, as in protobuf
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _varint(payload, pos)
                pos += length
            elif wire == 5:
                pos += 4
            else:  # groups or garbage
                return None
    except (IndexError, ValueError):
        return None
    return seq if seq and pos == end else None


def rejected_key(topics: Topics, topic: str, payload: bytes) -> AckKey | None:
    """The ack key of a message the hub turned away, when its topic and seq can be read."""
    try:
        device_id, kind = parse_topic(topics, topic)
    except Rejected:
        return None
    if kind not in ACKED_KINDS:
        return None
    seq = seq_of(payload, SEQ_FIELD[kind])
    return None if seq is None else (device_id, kind.value, seq)


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted inclusive ``(first, last)`` runs of ``seqs``."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


class AckPublisher:
    """Pending acks per device, published every ``interval_s`` (callers serialise calls)."""

    def __init__(
        self,
        topics: Topics,
        *,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._topics, self._interval, self._clock = topics, interval_s, clock
        self._pending: dict[str, dict[str, set[int]]] = {}
        self._next_at = 0.0
        self.published = 0  # DeliveryAck messages handed to the client
        self.failures = 0

    def add(self, keys: Iterable[AckKey]) -> None:
        for device_id, stream, seq in keys:
            self._pending.setdefault(device_id, {}).setdefault(stream, set()).add(seq)

    @property
    def pending_devices(self) -> int:
        return len(self._pending)

    def publish_due(self, client: mqtt.Client, *, force: bool = False) -> int:
        """Publish one ack per device with pending seqs once ``interval_s`` has passed since
        the last round (``force``: now); returns how many were published."""
        now = self._clock()
        if not self._pending or (not force and now < self._next_at):
            return 0
        if not client.is_connected():
            return 0
        self._next_at = now + self._interval
        sent_at = int(time.time() * 1000)
        published = 0
        for device_id in list(self._pending):
            streams = self._pending[device_id]
            ack = pb.DeliveryAck(device_id=device_id, sent_at=sent_at)
            for stream, seqs in streams.items():
                for first, last in ranges(seqs):
                    ack.ranges.add(stream=stream, first=first, last=last)
            try:
                info = client.publish(self._topics.ack(device_id), ack.SerializeToString(), qos=1)
            except Exception as exc:  # never into the ingest loop
                self.failures += 1
                log.warning("cannot publish the delivery ack for %s: %s", device_id, exc)
                del self._pending[device_id]  # a bad id would fail forever; agents resend
                continue
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                self.failures += 1  # e.g. the client's queue is full: try again next round
                continue
            del self._pending[device_id]  # NO_CONN: paho keeps the QoS 1 message for later
            published += 1
        self.published += published
        return published
