"""Decoding rules, one per rejection reason, without a broker or a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.ingest._decode import (
    DEVICE_MISMATCH,
    MALFORMED,
    SEQ_ZERO,
    TOO_LARGE,
    WRONG_TOPIC,
    Rejected,
    decode,
)
from hub.tables.packed import unpack
from proto import messages_pb2 as pb
from proto.topics import TopicKind, Topics
from tests.ingest import helpers as h

TOPICS = Topics(prefix="edgeloop/v1", fleet="default")


def _decode(topic: str, payload: bytes, max_bytes: int = 1 << 20):  # type: ignore[no-untyped-def]
    return decode(topics=TOPICS, topic=topic, payload=payload, max_bytes=max_bytes)


def test_telemetry_window_becomes_rows() -> None:
    item = _decode(TOPICS.telemetry("cam-1"), h.window("cam-1", 7, samples=2, dropped=3))
    assert item.kind is TopicKind.TELEMETRY and (item.device_id, item.seq) == ("cam-1", 7)
    w = item.window
    assert w is not None
    assert w["window_start"] == datetime.fromtimestamp((h.T0_MS + 70_000) / 1000, tz=UTC)
    assert w["window_start"].tzinfo is not None
    assert w["latency"] == {"edges": [1.0, 5.0], "counts": [8, 1, 1]}
    assert w["output_counts"] == [7, 3] and w["dropped_windows"] == 3 and w["num_samples"] == 2
    assert w["features"] == []  # the sketches are in the packed column, as sent
    packed = unpack(w["packed"])
    assert [(f.name, f.index, list(f.counts), f.sum) for f in packed.features] == [
        ("f0", 0, [1, 2], 1.5)
    ]
    assert (packed.device_id, packed.seq, len(packed.samples)) == ("cam-1", 7, 0)  # no samples
    assert w["shadow"] == {}
    assert [s["prediction_id"] for s in item.samples] == ["cam-1-p7-0", "cam-1-p7-1"]
    assert item.samples[0]["predicted_label"] == 1 and item.samples[0]["shape"] == [2]


def test_feedback_labels_and_event_kind() -> None:
    item = _decode(TOPICS.feedback("cam-1"), h.feedback("cam-1", 4, labels=3))
    assert [label["label"] for label in item.labels] == [0, 1, 0]
    assert item.labels[0]["value"] is None and item.labels[0]["predicted_label"] == 1
    ev = _decode(TOPICS.events("cam-1"), h.event("cam-1", "e-1", pb.EVENT_KIND_ROLLED_BACK))
    assert ev.event is not None and ev.event["kind"] == "rolled_back" and ev.event_id == "e-1"


def test_state_is_a_dict() -> None:
    item = _decode(TOPICS.state("cam-1"), h.state("cam-1", online=True))
    assert item.online is True and item.state is not None
    assert item.state["active"]["version"] == "3" and item.state["lastCommandId"] == "cmd-1"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPICS.telemetry("cam-1"), b"\xff\xff\xff garbage", MALFORMED),
        (TOPICS.telemetry("cam-1"), b"", MALFORMED),
        (TOPICS.events("cam-1"), h.event("cam-1", ""), MALFORMED),
        ("edgeloop/v1/default/devices/$bad/telemetry", h.window("$bad", 1), WRONG_TOPIC),
        ("edgeloop/v1/default/devices/a b/telemetry", h.window("a b", 1), WRONG_TOPIC),
        ("edgeloop/v1/other/devices/cam-1/telemetry", h.window("cam-1", 1), WRONG_TOPIC),
        (TOPICS.command("cam-1"), b"x", WRONG_TOPIC),
        (TOPICS.telemetry("cam-1"), h.window("cam-1", 0), SEQ_ZERO),
        (TOPICS.feedback("cam-1"), h.feedback("cam-1", 0), SEQ_ZERO),
        (TOPICS.telemetry("cam-1"), h.window("cam-2", 1), DEVICE_MISMATCH),
        (TOPICS.state("cam-1"), h.state("cam-2", online=True), DEVICE_MISMATCH),
    ],
)
def test_rejections(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        _decode(topic, payload)
    assert caught.value.reason == reason


def test_too_large_is_checked_before_parsing() -> None:
    payload = h.window("cam-1", 1, samples=50)
    assert _decode(TOPICS.telemetry("cam-1"), payload, max_bytes=len(payload)).seq == 1
    with pytest.raises(Rejected) as caught:
        _decode(TOPICS.telemetry("cam-1"), payload, max_bytes=len(payload) - 1)
    assert caught.value.reason == TOO_LARGE
