"""Each loop figure, checked against its definition (docs/LOOP_METRICS.md) on a hand-built
timeline: onset at t=100, devices a and b drifted (site berlin), c clean (site paris)."""

from __future__ import annotations

import math

import pytest

from edgeloop_cli.demo.metrics import (
    AlertRow,
    LabelRow,
    WindowRow,
    clustered_wilson,
    cohort_accuracy,
    detection,
    effective_n,
    false_alarms,
    recovered_after,
    scope_devices,
    scoreable,
    wilson,
)

ONSET = 100.0
DRIFTED = {"a", "b"}
GROUPS = {"a": "berlin", "b": "berlin", "c": "paris"}
SERVED = {"1": {"a", "b", "c"}}


def label(
    t: float, device: str, correct: bool, source: str | None = "s1", v: str = "1"
) -> LabelRow:
    return LabelRow(t=t, device=device, version=v, correct=correct, source=source)


def test_wilson_interval_matches_the_formula() -> None:
    assert wilson(0, 0) is None
    lo, hi = wilson(90, 100)  # type: ignore[misc]
    assert lo == pytest.approx(82.56, abs=0.01) and hi == pytest.approx(94.48, abs=0.01)
    assert wilson(10, 10) == (72.25, 100.0)


def test_reads_of_one_source_are_not_independent_draws() -> None:
    # 10 sources read 10 times each, every read of a source the same: 10 observations, not 100
    same = [(f"s{i}", i < 9) for i in range(10) for _ in range(10)]
    ci, n_eff = clustered_wilson(same)
    assert n_eff == pytest.approx(10.0) and ci == wilson(9, 10)
    assert effective_n([(10, 10), (0, 10)]) == pytest.approx(2.0)
    assert effective_n([(9, 10), (1, 10)]) == pytest.approx(3.125)  # p(1-p) / (32 / 400)
    # one read per source: the plain interval
    once = [(f"s{i}", i < 90) for i in range(100)]
    assert clustered_wilson(once) == (wilson(90, 100), pytest.approx(100.0))
    # reads that disagree within a source carry more information than identical ones
    mixed = [(f"s{i}", j < 9) for i in range(10) for j in range(10)]  # 90%, spread evenly
    assert clustered_wilson(mixed)[1] == 100.0  # no between-source variance: capped at n
    # all right (no variance to measure): the number of sources
    assert clustered_wilson([("a", True)] * 5 + [("b", True)] * 5)[1] == 2.0
    assert clustered_wilson([]) == (None, 0.0)


def test_scoreable_drops_trained_sources_and_unknown_ones() -> None:
    rows = [label(1, "a", True, "s1"), label(2, "a", True, "s2"), label(3, "a", True, None)]
    assert [r.source for r in scoreable(rows, trained={"s2"})] == ["s1"]


def test_cohort_accuracy_splits_by_cohort_period_and_version() -> None:
    rows = [
        label(99, "a", True),  # before the period
        label(100, "a", False, "s1"),
        label(101, "b", True, "s2"),
        label(102, "c", True, "s3"),
        label(103, "c", True, v="2"),  # another version
        label(110, "c", False),  # end is exclusive
    ]
    found = cohort_accuracy(rows, drifted=DRIFTED, start=100, end=110, versions={"1"})
    assert (found["drifted"].accuracy, found["drifted"].n) == (50.0, 2)
    assert (found["clean"].accuracy, found["clean"].n) == (100.0, 1)
    assert (found["fleet"].accuracy, found["fleet"].n) == (pytest.approx(66.67), 3)
    assert found["fleet"].ci95 == wilson(2, 3)  # one read per source: plain Wilson
    assert found["fleet"].n_effective == 3 and found["fleet"].sources == 3
    empty = cohort_accuracy([], drifted=DRIFTED, start=0, end=1)
    assert empty["fleet"].accuracy is None and empty["fleet"].ci95 is None


def test_scope_devices() -> None:
    assert scope_devices("device:a", groups=GROUPS, served=SERVED) == {"a"}
    assert scope_devices("group:berlin", groups=GROUPS, served=SERVED) == {"a", "b"}
    assert scope_devices("version:m@1", groups=GROUPS, served=SERVED) == {"a", "b", "c"}
    assert scope_devices("other", groups=GROUPS, served=SERVED) == set()


def test_detection_is_the_first_alert_after_onset_on_a_drifted_scope() -> None:
    alerts = [
        AlertRow(id=1, t=50, kind="drift", scope="group:berlin"),  # before onset: not it
        AlertRow(id=2, t=103, kind="drift", scope="device:c"),  # clean scope: not it
        AlertRow(id=3, t=105, kind="drift", scope="group:berlin"),
        AlertRow(id=4, t=107, kind="drift", scope="device:a"),
    ]
    windows = [
        WindowRow(device="a", end=99, received=99.5),  # all before onset
        WindowRow(device="a", end=101, received=101.5),  # straddles the onset: counts
        WindowRow(device="b", end=103, received=103.5),
        WindowRow(device="a", end=104, received=105.0),  # received as the alert opened
        WindowRow(device="b", end=105, received=105.5),  # after the alert
        WindowRow(device="c", end=103, received=103.5),  # clean device
    ]
    found = detection(alerts, windows, onset=ONSET, drifted=DRIFTED, groups=GROUPS, served=SERVED)
    assert found.alert is not None and found.alert.id == 3
    assert found.detection_s == 5.0
    assert found.windows_total == 3 and found.windows_per_device == 1.5


def test_no_detection_when_only_false_alarms() -> None:
    alerts = [AlertRow(id=2, t=103, kind="drift", scope="device:c")]
    found = detection(alerts, [], onset=ONSET, drifted=DRIFTED, groups=GROUPS, served=SERVED)
    assert found.alert is None and found.detection_s is None and found.windows_total is None


def test_false_alarms_before_onset_or_on_clean_scopes() -> None:
    alerts = [
        AlertRow(id=1, t=50, kind="drift", scope="group:berlin"),
        AlertRow(id=2, t=103, kind="drift", scope="device:c"),
        AlertRow(id=3, t=105, kind="drift", scope="group:berlin"),
        AlertRow(id=4, t=106, kind="degradation", scope="version:m@1"),  # contains a, b
        AlertRow(id=5, t=107, kind="drift", scope="group:paris"),
    ]
    found = false_alarms(alerts, onset=ONSET, drifted=DRIFTED, groups=GROUPS, served=SERVED)
    assert [a.id for a in found] == [1, 2, 5]


def test_recovered_after_needs_a_full_rolling_window_within_tolerance() -> None:
    rows = [label(90.0, "a", True)] * 10  # before onset: never counted
    # after onset: 10 wrong, then right ones; the clean device never counts
    rows += [label(100.0 + i, "a", False) for i in range(10)]
    rows += [label(110.0 + i, "b", True) for i in range(30)]
    rows += [label(105.0, "c", True)] * 50
    # window of 20 labels at >= 95% (oracle 96, tolerance 1): at most 1 wrong among the last 20
    found = recovered_after(
        rows, onset=ONSET, drifted=DRIFTED, target=96.0, tolerance_pp=1.0, min_labels=20
    )
    # the 20-label window holds at most one wrong label from the 29th right label on: t=128
    assert found == 28.0
    assert recovered_after(rows, onset=ONSET, drifted=DRIFTED, target=None) is None
    assert recovered_after(rows, onset=ONSET, drifted=DRIFTED, target=99.9, min_labels=200) is None
    assert math.isfinite(found)
    # only the retrained version's predictions count: version 1 is never "recovered"
    assert (
        recovered_after(
            rows, onset=ONSET, drifted=DRIFTED, target=96.0, min_labels=20, versions={"2"}
        )
        is None
    )
    retrained = [label(200.0 + i, "a", True, v="2") for i in range(20)]
    assert (
        recovered_after(
            rows + retrained,
            onset=ONSET,
            drifted=DRIFTED,
            target=96.0,
            min_labels=20,
            versions={"2"},
        )
        == 119.0
    )
