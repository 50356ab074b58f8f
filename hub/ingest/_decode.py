"""Payload → rows: parse one MQTT message into what the store writes, or a rejection reason.

Pure functions (no database, no network) so that every rejection rule is tested directly.
Rows are plain dicts for SQLAlchemy Core bulk inserts; times are aware UTC datetimes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message

from hub.core.errors import EdgeloopError
from hub.tables.devices import DEVICE_ID_PATTERN
from hub.tables.packed import pack_window
from proto import messages_pb2 as pb
from proto.topics import TopicKind, Topics

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)

# Rejection reasons (the keys of IngestStats.rejected).
MALFORMED = "malformed"
WRONG_TOPIC = "wrong_topic"
TOO_LARGE = "too_large"
SEQ_ZERO = "seq_zero"
DEVICE_MISMATCH = "device_mismatch"
UNKNOWN_DEVICE = "unknown_device"
STORE_ERROR = "store_error"
SOURCE_MAX = 128  # feedback_label.source
REASONS = (
    MALFORMED,
    WRONG_TOPIC,
    TOO_LARGE,
    SEQ_ZERO,
    DEVICE_MISMATCH,
    UNKNOWN_DEVICE,
    STORE_ERROR,
)


class Rejected(EdgeloopError):
    """A message that will never become valid: counted under ``reason``, acked, dropped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(slots=True)
class Item:
    """One decoded message: its kind, device, dedupe key and the rows it becomes."""

    kind: TopicKind
    device_id: str
    seq: int = 0  # telemetry / feedback
    event_id: str = ""  # events
    window: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    event: dict[str, Any] | None = None
    online: bool = False  # state
    state: dict[str, Any] | None = None
    mid: int = 0
    qos: int = 0


def ms_to_datetime(ms: int) -> datetime:
    """Unix milliseconds → aware UTC datetime (0 or out of range → the epoch)."""
    try:
        return datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(0, tz=UTC)


# The hot path of the ingest worker: ``[:]`` copies a repeated field into a list faster than
# ``list()``. The feature sketches are not converted at all: the window is stored packed
# (``hub.tables.packed``).
def _histogram(h: pb.Histogram) -> dict[str, Any]:
    return {"edges": h.edges[:], "counts": h.counts[:]}


def _shadow(s: pb.ShadowStats) -> dict[str, Any]:
    return {
        "model": s.model,
        "version": s.version,
        "bundle_digest": s.bundle_digest,
        "compared": s.compared,
        "agreed": s.agreed,
        "latency_delta_ms": s.latency_delta_ms,
        "errors": s.errors,
    }


def _parse(message: Message, payload: bytes, kind: TopicKind) -> None:
    try:
        message.ParseFromString(payload)
    except (DecodeError, ValueError) as exc:  # truncated, wrong wire type, bad UTF-8
        raise Rejected(MALFORMED, f"not a {kind} protobuf ({exc})") from None


def _check_device(payload_device: str, topic_device: str) -> None:
    if payload_device != topic_device:
        raise Rejected(
            DEVICE_MISMATCH,
            f"payload device_id {payload_device!r} on the topic of {topic_device!r}",
        )


INT64_MAX = 2**63 - 1  # the database's BIGINT


def _check_seq(seq: int) -> None:
    if seq == 0:
        raise Rejected(SEQ_ZERO, "seq 0 is invalid (sequences start at 1)")
    if seq > INT64_MAX:
        raise Rejected(MALFORMED, f"seq {seq} does not fit a signed 64-bit integer")


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value > INT64_MAX:
            raise Rejected(MALFORMED, f"{name} {value} does not fit a signed 64-bit integer")


# Devices publish on the same few topics over and over: a parsed topic is remembered (the
# ``Topics`` it was parsed for included), so the receive path splits and checks it once.
_PARSED: dict[str, tuple[Topics, str, TopicKind]] = {}
PARSED_TOPICS_MAX = 100_000  # then the cache starts over (a flood of new ids stays bounded)


def parse_topic(topics: Topics, topic: str) -> tuple[str, TopicKind]:
    """``(device_id, kind)`` of a device → hub topic, else ``Rejected(WRONG_TOPIC)``."""
    hit = _PARSED.get(topic)
    if hit is not None and hit[0] is topics:
        return hit[1], hit[2]
    try:
        device_id, kind = topics.parse(topic)
    except ValueError as exc:
        raise Rejected(WRONG_TOPIC, str(exc)) from None
    if kind is TopicKind.COMMAND or kind is TopicKind.ACK:
        raise Rejected(WRONG_TOPIC, f"{topic!r} is a hub → device topic")
    if not _DEVICE_ID.match(device_id):
        raise Rejected(WRONG_TOPIC, f"device id {device_id!r} is not a valid device id")
    if len(_PARSED) >= PARSED_TOPICS_MAX:
        _PARSED.clear()
    _PARSED[topic] = (topics, device_id, kind)
    return device_id, kind


def decode(*, topics: Topics, topic: str, payload: bytes, max_bytes: int) -> Item:
    """Decode one message; raises :class:`Rejected` with the reason when it is not valid."""
    if len(payload) > max_bytes:
        raise Rejected(TOO_LARGE, f"{len(payload)} bytes > limit {max_bytes}")
    device_id, kind = parse_topic(topics, topic)
    if not payload:  # e.g. a retained state being cleared: nothing to store
        raise Rejected(MALFORMED, "empty payload")
    if kind is TopicKind.TELEMETRY:
        return _telemetry(payload, device_id)
    if kind is TopicKind.FEEDBACK:
        return _feedback(payload, device_id)
    if kind is TopicKind.EVENTS:
        return _event(payload, device_id)
    return _state(payload, device_id)


def _telemetry(payload: bytes, device_id: str) -> Item:
    w = pb.TelemetryWindow()
    _parse(w, payload, TopicKind.TELEMETRY)
    _check_device(w.device_id, device_id)
    _check_seq(w.seq)
    count, errors, dropped = w.count, w.errors, w.dropped_windows
    if count > INT64_MAX or errors > INT64_MAX or dropped > INT64_MAX:  # (the usual case: no)
        _check_counts(count=count, errors=errors, dropped_windows=dropped)
    model, version = w.model, w.version
    samples = [
        {
            "device_id": device_id,
            "model": model,
            "version": version,
            "prediction_id": s.prediction_id,
            "values": s.values[:],
            "shape": s.shape[:],
            "predicted_label": s.predicted_label if s.HasField("predicted_label") else None,
            "at": ms_to_datetime(s.at),
        }
        for s in w.samples
    ]
    window = {
        "device_id": device_id,
        "model": model,
        "version": version,
        "seq": w.seq,
        "bundle_digest": w.bundle_digest,
        "window_start": ms_to_datetime(w.window_start),
        "window_end": ms_to_datetime(w.window_end),
        "count": count,
        "errors": errors,
        "latency": _histogram(w.latency),
        "output_counts": w.output_counts[:],
        "confidence": _histogram(w.confidence),
        "features": [],  # (rows before the packed column held the sketches here)
        "shadow": _shadow(w.shadow) if w.HasField("shadow") else {},
        "num_samples": len(samples),
        "dropped_windows": dropped,
        "packed": pack_window(w, payload),  # the sketches, as sent (after reading samples)
    }
    return Item(
        kind=TopicKind.TELEMETRY, device_id=device_id, seq=w.seq, window=window, samples=samples
    )


def _feedback(payload: bytes, device_id: str) -> Item:
    f = pb.Feedback()
    _parse(f, payload, TopicKind.FEEDBACK)
    _check_device(f.device_id, device_id)
    _check_seq(f.seq)
    labels = [
        {
            "device_id": device_id,
            "seq": f.seq,
            "prediction_id": label.prediction_id,
            "label": label.label if label.WhichOneof("target") == "label" else None,
            "value": label.value if label.WhichOneof("target") == "value" else None,
            "predicted_label": (
                label.predicted_label if label.HasField("predicted_label") else None
            ),
            "predicted_value": (
                label.predicted_value if label.HasField("predicted_value") else None
            ),
            "model": label.model,
            "version": label.version,
            "source": label.source[:SOURCE_MAX] or None,
            "at": ms_to_datetime(label.at),
        }
        for label in f.labels
    ]
    return Item(kind=TopicKind.FEEDBACK, device_id=device_id, seq=f.seq, labels=labels)


def _event(payload: bytes, device_id: str) -> Item:
    e = pb.DeploymentEvent()
    _parse(e, payload, TopicKind.EVENTS)
    _check_device(e.device_id, device_id)
    if not e.event_id:
        raise Rejected(MALFORMED, "deployment event without event_id")
    kind_name = pb.EventKind.Name(e.kind) if e.kind in pb.EventKind.values() else "unspecified"
    row = {
        "event_id": e.event_id,
        "device_id": device_id,
        "command_id": e.command_id,
        "rollout_id": e.rollout_id,
        "kind": kind_name.removeprefix("EVENT_KIND_").lower(),
        "progress": float(e.progress),
        "reason": e.reason,
        "model": e.model,
        "version": e.version,
        "at": ms_to_datetime(e.at),
    }
    return Item(
        kind=TopicKind.EVENTS, device_id=device_id, seq=e.seq, event_id=e.event_id, event=row
    )


def _state(payload: bytes, device_id: str) -> Item:
    s = pb.AgentState()
    _parse(s, payload, TopicKind.STATE)
    _check_device(s.device_id, device_id)
    return Item(kind=TopicKind.STATE, device_id=device_id, online=s.online, state=MessageToDict(s))
