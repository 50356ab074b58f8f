"""MQTT topic names: building, parsing and rejecting what is not ours."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proto.topics import TopicKind, Topics, validate_device_id

TOPICS = Topics()


def test_default_topics_per_device() -> None:
    base = "edgeloop/v1/default/devices/cam-7"
    assert TOPICS.command("cam-7") == f"{base}/cmd"
    assert TOPICS.state("cam-7") == f"{base}/state"
    assert TOPICS.events("cam-7") == f"{base}/events"
    assert TOPICS.telemetry("cam-7") == f"{base}/telemetry"
    assert TOPICS.feedback("cam-7") == f"{base}/feedback"


def test_prefix_and_fleet_are_configurable() -> None:
    topics = Topics(prefix="acme/ml/edgeloop/v1", fleet="plant-3")
    assert topics.base == "acme/ml/edgeloop/v1/plant-3"
    assert topics.telemetry("d1") == "acme/ml/edgeloop/v1/plant-3/devices/d1/telemetry"
    assert topics.parse("acme/ml/edgeloop/v1/plant-3/devices/d1/state") == ("d1", TopicKind.STATE)


def test_shared_and_wildcard_subscriptions() -> None:
    assert TOPICS.shared("telemetry") == "$share/hub/edgeloop/v1/default/devices/+/telemetry"
    assert (
        TOPICS.shared(TopicKind.EVENTS, group="ingest")
        == "$share/ingest/edgeloop/v1/default/devices/+/events"
    )
    assert TOPICS.wildcard(TopicKind.STATE) == "edgeloop/v1/default/devices/+/state"


@pytest.mark.parametrize("kind", list(TopicKind))
def test_parse_inverts_every_builder(kind: TopicKind) -> None:
    device_id, parsed = TOPICS.parse(TOPICS.device("sensor_01.a", kind))
    assert (device_id, parsed) == ("sensor_01.a", kind)
    assert isinstance(parsed, TopicKind)


@pytest.mark.parametrize(
    "topic",
    [
        "edgeloop/v1/other/devices/d1/state",  # another fleet
        "other/v1/default/devices/d1/state",  # another prefix
        "edgeloop/v1/default/devices/d1",  # no kind
        "edgeloop/v1/default/devices/d1/state/extra",  # too deep
        "edgeloop/v1/default/devices//state",  # empty device id
        "edgeloop/v1/default/devices/d1/status",  # unknown kind
        "edgeloop/v1/default/devices/+/state",  # a filter, not a topic
        "edgeloop/v1/default/devices/d#/state",
        "edgeloop/v1/default/devices/$sys/state",
        "edgeloop/v1/default/agents/d1/state",
        "$share/hub/edgeloop/v1/default/devices/d1/state",
        "",
    ],
)
def test_parse_rejects_topics_that_are_not_ours(topic: str) -> None:
    with pytest.raises(ValueError, match="topic"):
        TOPICS.parse(topic)


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "+", "#", "a#", "nul\x00", "$SYS"])
def test_bad_device_ids_are_refused_when_building(device_id: str) -> None:
    with pytest.raises(ValueError):
        TOPICS.command(device_id)
    with pytest.raises(ValueError):
        validate_device_id(device_id)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        TOPICS.device("d1", "status")
    with pytest.raises(ValueError):
        TOPICS.shared("nope")


@pytest.mark.parametrize(
    ("prefix", "fleet"),
    [("", "default"), ("a//b", "default"), ("a/+", "default"), ("edgeloop/v1", "a/b"),
     ("edgeloop/v1", ""), ("edgeloop/v1", "#"), ("$share/x", "default")],
)  # fmt: skip
def test_bad_prefix_or_fleet_is_refused(prefix: str, fleet: str) -> None:
    with pytest.raises(ValueError):
        Topics(prefix=prefix, fleet=fleet)


def test_topics_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TOPICS.fleet = "other"  # type: ignore[misc]


@settings(max_examples=200, deadline=None)
@given(
    device_id=st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="/+#\x00"), min_size=1
    ).filter(lambda s: not s.startswith("$")),
    kind=st.sampled_from(list(TopicKind)),
)
def test_any_valid_device_id_round_trips(device_id: str, kind: TopicKind) -> None:
    assert TOPICS.parse(TOPICS.device(device_id, kind)) == (device_id, kind)
