"""Selector parser, phase planner and gates (gates on rows inserted in SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.db import make_engine, session_scope
from hub.core.errors import InvalidInput
from hub.rollouts.gates import (
    DEFAULT_GATES,
    GateResult,
    Scope,
    evaluate,
    merged_gates,
    p95,
    quality_gates,
)
from hub.rollouts.phases import Candidate, choose, order, parse_phases
from hub.rollouts.selectors import parse_selector
from hub.tables import Alert, FeedbackLabelRow, TelemetryWindowRow, create_all, drop_all
from hub.tables.rollouts import Rollout, RolloutDevice


def m(text: str, *, id: str = "d1", group: str = "g", **tags: str) -> bool:
    return parse_selector(text).matches(device_id=id, group=group, tags=tags)


def test_selector_expressions() -> None:
    assert m("all")
    assert m("site=berlin and hw=rpi4", site="berlin", hw="rpi4")
    assert not m("site=berlin and hw=rpi4", site="berlin", hw="x86")
    assert m("site=berlin or site=paris", site="paris")
    assert m("not site=berlin", site="paris")
    assert m("site=berlin AND (hw=rpi4 OR group:lab)", site="berlin", group="lab")
    assert not m("site=berlin and not (hw=rpi4 or group:lab)", site="berlin", group="lab")
    assert m("id:a,b", id="b") and not m("id:a,b", id="c")
    assert m("hw!=rpi4", hw="x86") and not m("hw!=rpi4", hw="rpi4")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("site=berlin and", "unexpected end"),
        ("(site=berlin", "missing ')'"),
        ("site=berlin)", "unexpected ')'"),
        ("berlin", "not a condition"),
        ("id:", "needs one or more names"),
        ("and site=x", "expected a condition"),
    ],
)
def test_selector_errors_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidInput, match="selector") as err:
        parse_selector(text)
    assert why in str(err.value)


def test_phase_specs() -> None:
    assert [p.target(40) for p in parse_phases("1,10%,50%,100%")] == [1, 4, 20, 40]
    assert [p.target(3) for p in parse_phases("5,100%")] == [3, 3]
    for bad in ("0", "10%,5%", "x", "150%", "5,2", ""):
        with pytest.raises(InvalidInput):
            parse_phases(bad)


def _pool(n: int, *, sites: int = 3, offline: set[int] = frozenset()) -> list[Candidate]:  # type: ignore[assignment]
    return [
        Candidate(device_id=f"d{i}", site=f"s{i % sites}", online=i not in offline)
        for i in range(n)
    ]


@given(st.integers(1, 60), st.integers(1, 5), st.sets(st.integers(0, 59)))
def test_order_is_deterministic_spread_and_prefers_online(
    n: int, sites: int, off: set[int]
) -> None:
    pool = _pool(n, sites=sites, offline=off)
    first = order("r1", pool)
    assert first == order("r1", list(reversed(pool)))  # input order does not matter
    assert sorted(first) == sorted(c.device_id for c in pool)  # everyone, once
    online = [c.device_id for c in pool if c.online]
    assert set(first[: len(online)]) == set(online)  # online devices first
    k = min(sites, len(online))
    by_id = {c.device_id: c.site for c in pool}
    assert len({by_id[d] for d in first[:k]}) == len({by_id[d] for d in online[:0] + first[:k]})
    if len(online) >= sites:  # the first `sites` devices cover every site that has online ones
        assert len({by_id[d] for d in first[:sites]}) == len({by_id[d] for d in online})


def test_choose_fills_cumulative_targets() -> None:
    pool = _pool(20)
    specs = parse_phases("1,25%,100%")
    chosen: list[str] = []
    for spec in specs:
        rest = [c for c in pool if c.device_id not in chosen]
        chosen += choose(rollout_id="r", spec=spec, total=20, assigned=len(chosen), pool=rest)
        assert len(chosen) == spec.target(20)
    assert len(set(chosen)) == 20


def test_p95_from_histograms() -> None:
    hist = {"edges": [1.0, 2.0, 5.0, 10.0], "counts": [0, 90, 6, 4, 0]}
    assert p95([hist]) == 5.0
    assert p95([{"edges": [1.0], "counts": [0, 0]}]) is None


@pytest.fixture
def engine(database_url: str):  # type: ignore[no-untyped-def]
    eng = make_engine(database_url)
    create_all(eng)
    yield eng
    drop_all(eng)
    eng.dispose()


def _window(
    dev: str, version: str, *, count: int, errors: int, lat: list[int], seq: int
) -> TelemetryWindowRow:
    now = datetime.now(UTC)
    return TelemetryWindowRow(
        device_id=dev,
        seq=seq,
        model="m",
        version=version,
        window_start=now - timedelta(seconds=5),
        window_end=now,
        count=count,
        errors=errors,
        latency={"edges": [1.0, 2.0, 5.0, 10.0], "counts": lat},
    )


def _labels(
    dev: str, version: str, *, right: int, wrong: int, at: datetime | None = None, tag: str = ""
) -> list[FeedbackLabelRow]:
    now = at or datetime.now(UTC)
    return [
        FeedbackLabelRow(
            device_id=dev,
            seq=1,
            prediction_id=f"{dev}-{version}-{tag}{i}",
            label=1,
            predicted_label=1 if i < right else 2,
            model="m",
            version=version,
            at=now,
        )
        for i in range(right + wrong)
    ]


def test_gates_on_stored_rows(engine) -> None:  # type: ignore[no-untyped-def]
    start = datetime.now(UTC) - timedelta(minutes=1)
    with session_scope(engine) as s:
        rollout = Rollout(
            id="ro-1",
            model="m",
            version="2",
            bundle_digest="sha256:x",
            bundle_size=1,
            selector="all",
            created_at=start,
        )
        devs = [
            RolloutDevice(
                rollout_id="ro-1",
                device_id=f"d{i}",
                phase=0,
                state="healthy",
                previous_model="m",
                previous_version="1",
            )
            for i in range(3)
        ]
        devs.append(RolloutDevice(rollout_id="ro-1", device_id="d9", phase=0, state="failed"))
        s.add(rollout)
        s.add_all(
            [
                _window("base", "1", count=100, errors=1, lat=[0, 90, 10, 0, 0], seq=1),
                _window("d0", "2", count=100, errors=10, lat=[0, 10, 10, 80, 0], seq=1),
            ]
        )
        # the accuracy baseline is the previous version on the rollout's own devices (d1):
        # a device outside the rollout ("base", much worse) does not count
        s.add_all(
            _labels("d1", "1", right=45, wrong=5)
            + _labels("base", "1", right=5, wrong=45)
            + _labels("d0", "2", right=30, wrong=20)
        )
        s.add(
            Alert(kind="drift", scope="version:m@2", model="m", version="2", score=3, threshold=1)
        )
    with session_scope(engine) as s:
        cfg = {**DEFAULT_GATES, "max_install_failure_rate": 0.5}
        scope = Scope(rollout=rollout, devices=devs, since=start, now=datetime.now(UTC))
        gates = {g.name: g for g in evaluate(s, scope, cfg)}
    assert gates["install_failure_rate"].value == pytest.approx(0.25)
    assert gates["install_failure_rate"].passed
    assert gates["error_rate"].value == pytest.approx(0.10)
    assert gates["error_rate"].baseline == pytest.approx(0.01)
    assert not gates["error_rate"].passed and gates["error_rate"].threshold == pytest.approx(0.03)
    assert gates["latency_p95"].value == 10.0 and gates["latency_p95"].baseline == 5.0
    assert not gates["latency_p95"].passed
    assert gates["accuracy"].value == pytest.approx(0.6) and gates[
        "accuracy"
    ].baseline == pytest.approx(0.9)
    assert not gates["accuracy"].passed
    assert gates["shadow_agreement"].insufficient_data and gates["shadow_agreement"].passed
    assert gates["drift"].value == 1 and not gates["drift"].passed
    blocking = {**cfg, "require_data": ["shadow_agreement"]}
    with session_scope(engine) as s:
        gates = {g.name: g for g in evaluate(s, scope, blocking)}
    assert not gates["shadow_agreement"].passed


def test_an_incident_canary_is_compared_with_the_baseline_since_the_incident(engine) -> None:  # type: ignore[no-untyped-def]
    """Before a drift the device's inputs were others: the previous version's accuracy then
    is no bar for the candidate now. ``baseline_since`` starts the baseline there."""
    now = datetime.now(UTC)
    incident = now - timedelta(minutes=10)
    with session_scope(engine) as s:
        rollout = Rollout(
            id="ro-i", model="m", version="2", bundle_digest="sha256:x", bundle_size=1,
            selector="all", created_at=now - timedelta(minutes=1),
        )  # fmt: skip
        dev = RolloutDevice(
            rollout_id="ro-i", device_id="d1", phase=0, state="healthy",
            previous_model="m", previous_version="1",
        )  # fmt: skip
        s.add_all([rollout, dev])
        s.add_all(
            _labels("d1", "1", right=50, wrong=0, at=now - timedelta(minutes=30), tag="a")
            + _labels("d1", "1", right=30, wrong=20, at=now - timedelta(minutes=5), tag="b")
            + _labels("d1", "2", right=31, wrong=19, tag="c")
        )
    scope = Scope(rollout=rollout, devices=[dev], since=now - timedelta(minutes=1), now=now)

    def accuracy(cfg: dict[str, Any]) -> GateResult:
        with session_scope(engine) as s:
            return next(g for g in quality_gates(s, scope, cfg) if g.name == "accuracy")

    lookback = accuracy(merged_gates({}))  # an hour of baseline: mostly the pre-drift labels
    assert lookback.baseline == pytest.approx(0.8) and not lookback.passed
    since = accuracy(merged_gates({"baseline_since": incident.isoformat()}))
    assert since.baseline == pytest.approx(0.6) and since.passed
    assert since.value == pytest.approx(0.62)
    for bad in ("yesterday", "2026-12-07T06:30:00", 5):
        with pytest.raises(InvalidInput, match="baseline_since"):
            merged_gates({"baseline_since": bad})


def test_the_accuracy_gate_skips_sources_in_a_training_split() -> None:
    """A label whose source record lies in the training split of a compared version is not
    scored (the split rule, salted with the dataset name); unknown sources are scored."""
    from hub.datasets.splits import DEFAULT_FRACTIONS, split_of
    from hub.rollouts.gates import TrainedSplits

    trained = TrainedSplits((("digits", tuple(DEFAULT_FRACTIONS.items())),))
    sources = [f"digits-{i:05d}" for i in range(200)]
    expected = {
        s for s in sources if split_of(s, fractions=DEFAULT_FRACTIONS, salt="digits") == "train"
    }
    assert {s for s in sources if trained.trained(s)} == expected
    assert 100 < len(expected) < 180  # about 70% are training sources
    assert not trained.trained(None) and not trained.trained("")
    assert not TrainedSplits(()).trained(sources[0])
