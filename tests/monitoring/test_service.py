"""The monitoring service on both databases: drift per scope, cursors, debounce, degradation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from hub.core.db import session_scope
from hub.monitoring import (
    DetectorCache,
    MonitorConfig,
    drift_score,
    evaluate,
    live_accuracy,
    open_alerts,
)
from hub.tables import Alert, MonitorCursor, MonitorScore, TelemetryWindowRow
from tests.monitoring.fleetdata import Fleet
from tests.monitoring.tiny_detector import TinyChi2, tiny_factory

DEVICES = {"cam-1": "north", "cam-2": "north", "cam-3": "south"}
CONFIG = MonitorConfig(window_size=200, false_alarm_rate=0.001, min_labels=50)


@pytest.fixture
def fleet(engine: Engine) -> Fleet:
    return Fleet(engine=engine).register()


def tiny_cache() -> DetectorCache:
    return DetectorCache(factory=tiny_factory)


def alerts(engine: Engine) -> list[Alert]:
    with Session(engine) as s:
        return list(s.exec(select(Alert)).all())


def test_reference_windows_raise_no_alert(engine: Engine, fleet: Fleet) -> None:
    fleet.telemetry(devices=DEVICES, windows=10, per_window=50)
    report = evaluate(engine, config=CONFIG, cache=tiny_cache())
    # 500 predictions per device: 2 windows each; 1000 in "north", 500 in "south"; 1500 in all
    assert report.rows == 30
    assert report.windows == 3 * 2 + 5 + 2 + 7
    assert report.scores == report.windows
    assert report.opened == [] and alerts(engine) == []
    with Session(engine) as s:
        scores = s.exec(select(MonitorScore)).all()
        assert {sc.scope for sc in scores} == {
            "device:cam-1", "device:cam-2", "device:cam-3",
            "group:north", "group:south", "version:sensor-clf@1",
        }  # fmt: skip
        assert all(0 <= sc.score <= sc.threshold and not sc.fired for sc in scores)
        ratio = drift_score(s, model="sensor-clf", version="1")
        assert ratio is not None and 0 < ratio < 1


def test_shifted_windows_alert_at_device_group_and_version_scope(
    engine: Engine, fleet: Fleet
) -> None:
    fleet.telemetry(devices=DEVICES, windows=4, per_window=50, shift=1.0)
    seen: list[Alert] = []
    report = evaluate(engine, config=CONFIG, cache=tiny_cache(), on_alert=seen.append)
    scopes = {a.scope for a in report.opened}
    assert scopes == {
        "device:cam-1", "device:cam-2", "device:cam-3",
        "group:north", "group:south", "version:sensor-clf@1",
    }  # fmt: skip
    assert [a.id for a in seen] == [a.id for a in report.opened]
    for alert in report.opened:
        assert alert.kind == "drift" and alert.detector == "tiny_chi2"
        assert (alert.model, alert.version) == ("sensor-clf", "1")
        assert alert.score > alert.threshold and alert.resolved_at is None
    with Session(engine) as s:
        assert len(open_alerts(s, kind="drift", model="sensor-clf")) == 6
        assert len(open_alerts(s, scope="group:north")) == 1
        assert open_alerts(s, kind="degradation") == []
        ratio = drift_score(s, model="sensor-clf", version="1")
        assert ratio is not None and ratio > 1


def test_no_duplicate_alerts_on_reevaluation_or_after_restart(engine: Engine, fleet: Fleet) -> None:
    fleet.telemetry(devices={"cam-1": "north"}, windows=4, per_window=50, shift=1.0)
    first = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert len(first.opened) == 3  # device, group and version: one window each
    again = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert again.rows == 0 and again.windows == 0 and again.opened == []
    # still drifting, evaluated by a "restarted" hub (fresh detectors): same open alerts
    fleet.telemetry(devices={"cam-1": "north"}, windows=4, per_window=50, shift=1.0)
    restarted = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert restarted.rows == 4 and restarted.windows == 3
    assert restarted.opened == []
    assert len(alerts(engine)) == 3


def test_partial_windows_survive_a_restart(engine: Engine, fleet: Fleet) -> None:
    fleet.telemetry(devices={"cam-1": "north"}, windows=3, per_window=50)  # 150 < 200
    cache = tiny_cache()
    report = evaluate(engine, config=CONFIG, cache=cache)
    assert report.rows == 3 and report.windows == 0
    fleet.telemetry(devices={"cam-1": "north"}, windows=1, per_window=50)  # now 200
    restarted = tiny_cache()
    report = evaluate(engine, config=CONFIG, cache=restarted)
    assert report.rows == 1 and report.windows == 3
    with Session(engine) as s:
        scores = s.exec(select(MonitorScore)).all()
        ids = {r.id or 0 for r in s.exec(select(TelemetryWindowRow)).all()}
    assert {sc.n for sc in scores} == {200}
    assert {sc.last_row_id for sc in scores} == {max(ids)}


def test_an_open_window_in_the_older_cursor_format_is_read_again(
    engine: Engine, fleet: Fleet
) -> None:
    """Cursors written before open windows lived in memory hold the window's counts; a hub
    that meets one re-reads the window's rows from its first id instead."""
    fleet.telemetry(devices={"cam-1": "north"}, windows=3, per_window=50)  # 150 < 200
    assert evaluate(engine, config=CONFIG, cache=tiny_cache()).windows == 0
    with session_scope(engine) as s:
        first = min(r.id or 0 for r in s.exec(select(TelemetryWindowRow)).all())
        for cursor in s.exec(select(MonitorCursor).where(MonitorCursor.scope != "*")).all():
            cursor.pending = {"n": 150, "rows": 3, "first_id": first, "features": {"0": [1]}}
            s.add(cursor)
    fleet.telemetry(devices={"cam-1": "north"}, windows=1, per_window=50)
    report = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert report.windows == 3
    with Session(engine) as s:
        assert {sc.n for sc in s.exec(select(MonitorScore)).all()} == {200}


def test_idle_scopes_are_evicted_and_rebuilt_from_the_database(
    engine: Engine, fleet: Fleet
) -> None:
    cache = DetectorCache(factory=tiny_factory, idle_s=0.0)
    fleet.telemetry(devices={"cam-1": "north", "cam-3": "south"}, windows=3, per_window=50)
    evaluate(engine, config=CONFIG, cache=cache)  # evicts everything idle for 0 s
    assert cache.sizes() == {"versions": 0, "scoped_detectors": 0, "open_windows": 0}
    fleet.telemetry(devices={"cam-1": "north", "cam-3": "south"}, windows=1, per_window=50)
    report = evaluate(engine, config=CONFIG, cache=cache)
    # the rebuilt open windows complete at 200: two devices, two groups and the version's
    # second window (its first, rows 1-4, completed in the first pass)
    assert report.windows == 5
    with Session(engine) as s:
        assert sorted(sc.n for sc in s.exec(select(MonitorScore)).all()) == [200] * 6


def test_groups_and_versions_get_one_window_per_batch_in_hub_serve(
    engine: Engine, fleet: Fleet
) -> None:
    """``aggregate_by_batch`` (as ``hub serve`` runs): a device's windows close at 200
    predictions, a group's and the version's once at the end of the batch read."""
    fleet.telemetry(devices={"cam-1": "north", "cam-3": "south"}, windows=8, per_window=50)
    config = MonitorConfig(window_size=200, false_alarm_rate=0.001, aggregate_by_batch=True)
    assert evaluate(engine, config=config, cache=tiny_cache()).windows == 2 * 2 + 2 + 1
    with Session(engine) as s:
        sizes = {sc.scope: sc.n for sc in s.exec(select(MonitorScore)).all()}
    assert sizes["group:north"] == 400 and sizes["version:sensor-clf@1"] == 800


def test_an_alert_is_dated_by_its_evidence_and_says_when_it_was_raised(
    engine: Engine, fleet: Fleet
) -> None:
    fleet.telemetry(devices={"cam-1": "north"}, windows=4, per_window=50, shift=1.0)
    with session_scope(engine) as s:
        rows = s.exec(select(TelemetryWindowRow)).all()
        for i, row in enumerate(rows):  # received an hour ago, a second apart
            row.received_at = datetime.now(UTC) - timedelta(hours=1) + timedelta(seconds=i)
            s.add(row)
        newest = max(r.received_at for r in rows)
    report = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert len(report.opened) == 3
    for alert in alerts(engine):
        at = alert.at if alert.at.tzinfo else alert.at.replace(tzinfo=UTC)
        assert abs((at - newest).total_seconds()) < 1e-3
        raised = datetime.fromisoformat(alert.detail["raised_at"])
        assert (raised - at).total_seconds() > 3500  # the monitor saw it an hour later


def test_an_alert_near_its_threshold_stays_open_instead_of_flapping(engine: Engine) -> None:
    """Fires at p < rate; resolves only after 3 windows in a row at p >= 0.01."""
    from hub.monitoring._alerts import AlertBook, Finding

    def finding(p: float, fired: bool) -> Finding:
        return Finding(
            kind="drift",
            scope="group:north",
            detector="mmd",
            score=1.0,
            threshold=2.0,
            p_value=p,
            fired=fired,
            n=200,
            last_row_id=1,
            detail={},
        )

    with session_scope(engine) as s:
        book = AlertBook(s, model="m", version="1", now=datetime.now(UTC), resolve_after=3)
        book.record(finding(1e-9, True))
        for p in (0.003, 0.2, 0.004, 0.5, 0.3):  # hovering: no clean streak of 3
            book.record(finding(p, False))
        assert book.opened and not book.resolved
        book.record(finding(0.6, False))  # 0.5, 0.3, 0.6: three clean in a row
        assert len(book.resolved) == 1


def test_alert_resolves_after_clean_evaluations(engine: Engine, fleet: Fleet) -> None:
    config = MonitorConfig(window_size=200, false_alarm_rate=0.001, resolve_after=3)
    fleet.telemetry(devices={"cam-1": "north"}, windows=4, per_window=50, shift=1.0)
    cache = tiny_cache()
    assert len(evaluate(engine, config=config, cache=cache).opened) == 3
    fleet.telemetry(devices={"cam-1": "north"}, windows=8, per_window=50)  # 2 clean windows
    report = evaluate(engine, config=config, cache=cache)
    assert report.resolved == [] and report.opened == []
    fleet.telemetry(devices={"cam-1": "north"}, windows=4, per_window=50)  # the third
    report = evaluate(engine, config=config, cache=cache)
    assert len(report.resolved) == 3
    with Session(engine) as s:
        assert open_alerts(s) == []
        assert all(a.resolved_at is not None for a in s.exec(select(Alert)).all())


def test_a_bad_row_is_skipped_and_counted(engine: Engine, fleet: Fleet) -> None:
    fleet.telemetry(devices={"cam-1": "north"}, windows=2, per_window=50)
    with session_scope(engine) as s:
        bad = fleet.window_row("cam-1", fleet.sample(50), group="north")
        bad.features = [{**bad.features[0], "counts": [1, 2]}]
        s.add(bad)
    fleet.telemetry(devices={"cam-1": "north"}, windows=2, per_window=50)
    report = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert report.rows == 4 and report.windows == 3 and report.errors == 0
    assert sum(report.skipped.values()) == 1
    assert "feature 0" in next(iter(report.skipped))


def test_telemetry_of_an_unknown_version_is_skipped(engine: Engine, fleet: Fleet) -> None:
    other = Fleet(engine=engine, model="ghost", digest="sha256:" + "ee" * 32)
    other.profile = fleet.profile
    other.telemetry(devices={"cam-9": "north"}, windows=2, per_window=50)
    report = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert report.rows == 0 and report.windows == 0
    assert report.skipped == {"ghost@1: no bundle with a reference profile": 2}
    assert evaluate(engine, config=CONFIG, cache=tiny_cache()).skipped == {}


def test_degradation_alert_from_labels(engine: Engine, fleet: Fleet) -> None:
    fleet.labels(device="cam-1", n=120, accuracy=0.95)
    report = evaluate(engine, config=CONFIG, cache=tiny_cache())
    assert report.labels == 120 and report.opened == []
    fleet.labels(device="cam-1", n=200, accuracy=0.60)
    report = evaluate(engine, config=CONFIG, cache=tiny_cache())
    found = {(a.kind, a.scope, a.detector) for a in report.opened}
    assert ("degradation", "version:sensor-clf@1", "wilson_accuracy") in found
    assert ("degradation", "device:cam-1", "wilson_accuracy") in found
    assert ("degradation", "group:default", "wilson_accuracy") in found
    wilson = next(a for a in report.opened if a.scope == "version:sensor-clf@1")
    assert wilson.threshold == pytest.approx(0.05)
    assert wilson.detail["evaluated_accuracy"] == pytest.approx(0.95)
    with Session(engine) as s:
        est = live_accuracy(s, model="sensor-clf", version="1")
        assert est.n == 320 and est.correct == 114 + 120
        assert est.low is not None and est.high is not None
        assert est.low < 234 / 320 < est.high
        assert live_accuracy(s, model="sensor-clf", version="2").n == 0


def test_sequential_accuracy_detector_fires(engine: Engine, fleet: Fleet) -> None:
    # a fixed rate (under the default budget only the Wilson test runs); no Wilson test
    config = MonitorConfig(window_size=200, false_alarm_rate=0.01, min_labels=10_000)
    fleet.labels(device="cam-1", n=300, accuracy=0.70)
    report = evaluate(engine, config=config, cache=tiny_cache())
    detectors = {a.detector for a in report.opened}
    assert detectors and "wilson_accuracy" not in detectors
    assert {a.kind for a in report.opened} == {"degradation"}


def test_under_the_budget_the_wilson_test_spends_its_share(engine: Engine, fleet: Fleet) -> None:
    """The default: only the Wilson test on labels, at the rate the budget gives the new
    labels (a third of a day's budget spread over the measured labels per day)."""
    fleet.labels(device="cam-1", n=300, accuracy=0.60)
    report = evaluate(engine, config=MonitorConfig(window_size=200), cache=tiny_cache())
    assert {a.detector for a in report.opened} == {"wilson_accuracy"}
    for alert in report.opened:
        rate = alert.detail["false_alarm_rate"]
        assert 0 < rate < 1 / 3 and alert.threshold == pytest.approx(0.05)  # the margin


def test_tiny_detector_is_the_one_in_use(engine: Engine, fleet: Fleet) -> None:
    cache = tiny_cache()
    fleet.telemetry(devices={"cam-1": "north"}, windows=4, per_window=50)
    evaluate(engine, config=CONFIG, cache=cache)
    with Session(engine) as s:  # closed: an open transaction would hold its locks
        ref = cache.reference(s, model="sensor-clf", version="1")
    assert ref is not None
    used = cache.detectors(ref, CONFIG.detector_settings, stream="telemetry", scope="device:cam-1")
    assert isinstance(used[0], TinyChi2) and used[0].updates == 1
