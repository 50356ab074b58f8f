"""Fuzzing the agent's delivery-ack path: the agent's real MQTT session and queue on a real
broker get garbage, truncated and structurally valid but nonsensical ``DeliveryAck``s
(hypothesis) on their ack topic. The session stays connected, counts what it ignores, and
removes exactly the queued items that valid ranges for this device name."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from tests.ingest import helpers as h
from tests.ingest._device import DEVICE, device, until

QUEUED = 6
MAX_SEQ = 2**63 - 1
SEQS = st.one_of(
    st.integers(0, QUEUED + 2), st.integers(2**63 - 2, 2**64 - 1), st.integers(0, 2**64 - 1)
)
RANGES = st.builds(
    lambda stream, first, last: pb.SeqRange(stream=stream, first=first, last=last),
    st.sampled_from(["telemetry", "events", "feedback", "", "Telemetry", "x" * 300]),
    SEQS,
    SEQS,
)
ACKS = st.builds(
    lambda device_id, ranges, at: pb.DeliveryAck(device_id=device_id, ranges=ranges, sent_at=at),
    st.sampled_from([DEVICE, "", "someone-else"]),
    st.lists(RANGES, max_size=4),
    st.integers(-(2**63), 2**63 - 1),
)


def _payloads() -> st.SearchStrategy[bytes]:
    whole = ACKS.map(lambda a: a.SerializeToString())
    cut = st.tuples(whole, st.floats(0, 1)).map(lambda p: p[0][: int(len(p[0]) * p[1])])
    return st.one_of(whole, whole, cut, st.binary(max_size=60))


def _named(payload: bytes) -> tuple[set[int], bool, bool]:
    """What the agent must make of a payload: the telemetry seqs it validly acks, whether
    (part of) it is to be ignored and counted, and whether it is an ack for this device."""
    ack = pb.DeliveryAck()
    try:
        ack.ParseFromString(payload)
    except Exception:
        return set(), True, False
    if ack.device_id != DEVICE:
        return set(), True, False
    seqs: set[int] = set()
    bad = False
    for r in ack.ranges:
        if (
            r.stream not in {"telemetry", "events", "feedback"}
            or not 0 < r.first <= r.last <= MAX_SEQ
        ):
            bad = True
        elif r.stream == "telemetry":
            seqs |= set(range(r.first, min(r.last, QUEUED) + 1))
    return seqs, bad, True


@pytest.mark.timeout(300)
@settings(
    max_examples=8, phases=[Phase.generate], deadline=None, suppress_health_check=list(HealthCheck)
)
@given(data=st.data())
def test_agent_session_survives_fuzzed_delivery_acks(
    data: st.DataObject, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    corpus = data.draw(st.lists(_payloads(), min_size=30, max_size=30))
    topics = h.fleet_topics()
    root = tmp_path / uuid.uuid4().hex
    root.mkdir()

    async def scenario() -> None:
        async with (
            device(mosquitto, topics, root, delivery="hub_ack") as (session, queue),
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"hub-{root.name}") as hub,
        ):
            for _ in range(QUEUED):
                queue.append(stream="telemetry", payload_for=lambda seq: h.window(DEVICE, seq))
            session.wake()
            await until(lambda: session.stats.published == QUEUED, what="the windows published")
            topic, acks_before = topics.ack(DEVICE), session.stats.hub_acks
            for payload in corpus:
                await hub.publish(topic, payload, qos=1)
            # a last, valid ack for nothing queued tells us the corpus has been handled
            fence = pb.DeliveryAck(device_id=DEVICE, ranges=[pb.SeqRange(stream="events")])
            fence.ranges[0].first = fence.ranges[0].last = 10**6
            await hub.publish(topic, fence.SerializeToString(), qos=1)
            named = [_named(p) for p in corpus]
            valid_for_us = sum(1 for _, _, ours in named if ours)
            await until(
                lambda: session.stats.hub_acks >= acks_before + valid_for_us + 1,
                what="every ack for this device handled",
            )
            removed = set().union(*(seqs for seqs, _, _ in named))
            assert len(queue) == QUEUED - len(removed)
            assert session.stats.hub_acked == len(removed)
            assert session.stats.malformed_acks == sum(1 for _, bad, _ in named if bad)
            assert session.stats.connected and session.stats.connects == 1
            assert session.stats.errors == 0

    asyncio.run(scenario())


def test_an_unexpected_error_in_the_session_reconnects_instead_of_ending_it(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    """A bug (here: the ack handler raising once) costs a reconnect, never the session."""
    topics = h.fleet_topics()

    async def scenario() -> None:
        async with (
            device(mosquitto, topics, tmp_path, delivery="hub_ack") as (session, queue),
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"hub-{tmp_path.name}") as hub,
        ):
            handle = session._on_hub_ack
            calls = {"n": 0}

            def failing_once(payload: bytes) -> None:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("injected: a bug in the ack handler")
                handle(payload)

            session._on_hub_ack = failing_once  # type: ignore[method-assign]
            queue.append(stream="telemetry", payload_for=lambda seq: h.window(DEVICE, seq))
            session.wake()
            await until(lambda: session.stats.published == 1, what="the window published")
            ack = pb.DeliveryAck(
                device_id=DEVICE, ranges=[pb.SeqRange(stream="telemetry", first=1, last=1)]
            )
            await hub.publish(topics.ack(DEVICE), ack.SerializeToString(), qos=1)
            await until(lambda: session.stats.errors == 1, what="the error counted")
            await until(
                lambda: session.stats.connected and session.stats.connects == 2,
                what="the session connected again",
            )
            assert "injected" in session.stats.last_error
            # the session works: a new ack after the reconnect removes the window
            await hub.publish(topics.ack(DEVICE), ack.SerializeToString(), qos=1)
            await until(lambda: len(queue) == 0, what="the window acked after the reconnect")

    asyncio.run(scenario())
