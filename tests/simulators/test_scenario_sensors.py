"""Scenario validation, sensor drift injectors and the lost/duplicated tally (no network)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from simulators.counting import tally
from simulators.errors import ScenarioError
from simulators.plan import assign_drifts, assign_groups, prefer_for
from simulators.scenario import DriftSpec, load_scenario, parse_scenario
from simulators.sensors import DataSource, Drift, SensorStream, rotate

SCENARIOS = Path(__file__).resolve().parents[2] / "simulators" / "scenarios"
DIGITS = DataSource.load("sklearn:digits")


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_scenarios_validate(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.fleet.devices >= 1 and scenario.name == path.stem


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[fleet]\ndevcies = 3\n", "devcies"),
        ('[[drift]]\nkind = "sideways"\n', "sideways"),
        ("[feedback]\ncoverage = 1.5\n", "coverage"),
        ('[[faults]]\nkind = "partition"\nat_s = 1\n', "flaky"),
        ('[[groups]]\nname = "a"\nfraction = 0.7\n[[groups]]\nname = "b"\nfraction = 0.7\n', "1"),
        ('[[drift]]\nkind = "noise"\ngroup = "nope"\n', "nope"),
        ("fleet = [", "TOML"),
    ],
)
def test_bad_scenarios_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ScenarioError, match=needle):
        parse_scenario(text, where="x.toml")


def test_groups_and_drift_are_assigned_deterministically() -> None:
    scenario = parse_scenario(
        '[[groups]]\nname = "a"\nfraction = 0.25\nruntime = "tflite"\n'
        '[[drift]]\nkind = "noise"\nfraction = 0.5\ngroup = "a"\n'
    )
    groups = assign_groups(scenario, 20)
    assert [g.name for g in groups].count("a") == 5 and groups[-1].name == "default"
    drifts = assign_drifts(scenario, groups, np.random.default_rng(0))
    assert sum(bool(d) for d in drifts) == 2 or sum(bool(d) for d in drifts) == 3
    assert all(not d for d, g in zip(drifts, groups, strict=True) if g.name != "a")
    assert (
        prefer_for(groups[0])[0].startswith("tflite") and prefer_for(groups[-1])[0] == "onnx:int8"
    )


@pytest.mark.parametrize("kind", ["noise", "rotation", "contrast", "brightness", "knockout"])
def test_each_drift_changes_records_within_range(kind: str) -> None:
    rng = np.random.default_rng(1)
    clean = SensorStream(source=DIGITS, rng=np.random.default_rng(2))
    x, _ = clean.read(200, elapsed_s=0)
    drifted = Drift(spec=DriftSpec(kind=kind, intensity=0.5)).transform(x, source=DIGITS, rng=rng)
    assert drifted.shape == x.shape and drifted.dtype == np.float32
    assert drifted.min() >= DIGITS.low and drifted.max() <= DIGITS.high
    assert np.abs(drifted - x).mean() > 0.5


def test_drift_starts_on_time_and_only_on_its_device() -> None:
    spec = DriftSpec(kind="brightness", intensity=0.5, start_s=10)
    stream = SensorStream(source=DIGITS, rng=np.random.default_rng(3), drifts=[Drift(spec=spec)])
    before, _ = stream.read(500, elapsed_s=5)
    after, _ = stream.read(500, elapsed_s=15)
    assert after.mean() > before.mean() + 3


def test_rotation_by_zero_is_identity_and_by_90_turns_the_image() -> None:
    img = np.zeros((1, 8, 8), dtype=np.float32)
    img[0, 0, :] = 16  # the top row
    assert np.array_equal(rotate(img, degrees=0, fill=0, shape=(8, 8)), img)
    turned = rotate(img, degrees=90, fill=0, shape=(8, 8))
    assert turned[0, :, 0].sum() == 16 * 8 or turned[0, :, 7].sum() == 16 * 8


def test_label_shift_and_unseen_classes() -> None:
    shift = DriftSpec(kind="label_shift", intensity=0.8, classes=[3])
    stream = SensorStream(source=DIGITS, rng=np.random.default_rng(4), drifts=[Drift(spec=shift)])
    _, labels = stream.read(1000, elapsed_s=0)
    assert labels is not None and (labels == 3).mean() > 0.7

    unseen = DriftSpec(kind="unseen_class", intensity=0.3, classes=[9], start_s=10)
    held = SensorStream(
        source=DIGITS,
        rng=np.random.default_rng(5),
        drifts=[Drift(spec=unseen)],
        held_out=frozenset({9}),
    )
    _, early = held.read(1000, elapsed_s=0)
    _, late = held.read(1000, elapsed_s=20)
    assert early is not None and late is not None
    assert not (early == 9).any() and 0.2 < (late == 9).mean() < 0.4


def test_tally_counts_gaps_duplicates_and_pending() -> None:
    expected = {"d1": {"telemetry": 5, "feedback": 2, "events": 3}, "d2": {"telemetry": 3}}
    received: dict[tuple[str, str], Counter[int | str]] = {
        ("d1", "telemetry"): Counter({1: 1, 2: 2, 3: 1, 5: 1}),  # 4 missing, 2 twice
        ("d1", "feedback"): Counter({1: 1, 2: 1}),
        ("d1", "events"): Counter({"e1": 1, "e2": 1, "e3": 3}),
        ("d2", "telemetry"): Counter({1: 1}),  # 2 and 3 still queued on the device
    }
    result = tally(expected=expected, received=received, pending={"d2": 2})
    assert result.sent == 13 and result.lost == 1 and result.duplicated == 3
    assert result.pending == 2 and result.by_stream["telemetry"]["lost"] == 1


def test_the_counter_counts_a_redelivered_deployment_event_once() -> None:
    """QoS 1 may deliver an event twice (a broker restart, a partition): the report's
    deployment_events count events, so a repeat of one event_id is a duplicate, not another
    failure (``sim run``'s "3 tampered bundles failed" once read 4)."""
    from proto import messages_pb2 as pb
    from proto.topics import Topics
    from simulators.counting import StreamCounter

    topics = Topics(prefix="edgeloop", fleet="f")
    counter = StreamCounter(host="127.0.0.1", port=1, topics=topics)
    failed = pb.DeploymentEvent(event_id="e1", device_id="d1", kind=pb.EVENT_KIND_FAILED)
    for _ in range(2):
        counter.take(topics.events("d1"), failed.SerializeToString())
    counter.take(
        topics.events("d1"),
        pb.DeploymentEvent(
            event_id="e2", device_id="d1", kind=pb.EVENT_KIND_FAILED
        ).SerializeToString(),
    )
    assert [e.event_id for e in counter.events["d1"]] == ["e1", "e2"]
    assert counter.received[("d1", "events")] == {"e1": 2, "e2": 1}  # the repeat is counted
