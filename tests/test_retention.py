"""Retention of labels, field samples, monitor scores and events, with their roll-ups, on
SQLite and PostgreSQL: what goes, what a reader still needs and keeps, and that the long
views (all-time live accuracy, drift score) read the same before and after."""

from __future__ import annotations

import inspect
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, func, select

from hub.core.db import make_engine, session_scope
from hub.core.settings import HubSettings
from hub.ingest.retention import rollup_and_prune
from hub.monitoring import drift_score, live_accuracy
from hub.retention import service as retention
from hub.retention.service import (
    FIELD_RECORDS_KEPT,
    RetentionPolicy,
    prune_events,
    prune_feedback,
    prune_monitor_scores,
    run_retention,
)
from hub.tables import (
    Alert,
    DatasetVersion,
    DeploymentEventRow,
    FeedbackLabelRow,
    FieldSample,
    LabelRollup,
    MonitorCursor,
    MonitorScore,
    MonitorScoreRollup,
    Rollout,
    RolloutDevice,
    RolloutEvent,
    TelemetryWindowRow,
    TriggerEvent,
    create_all,
)
from hub.triggers.field_data import labelled_field_records

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=40)  # past every default retention but the events'
CUTOFF = NOW - timedelta(days=30)


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = make_engine(database_url)
    create_all(engine)
    yield engine
    engine.dispose()


def _count(engine: Engine, table: type[SQLModel], *where: Any) -> int:
    with Session(engine) as s:
        return int(s.exec(select(func.count()).select_from(table).where(*where)).one())


def _cursor(engine: Engine, *, stream: str, version: str, last_id: int) -> None:
    """Monitoring's read cursor of m@version (scope ``*``): it has read ids up to last_id."""
    with session_scope(engine) as s:
        s.add(MonitorCursor(stream=stream, model="m", version=version, scope="*", last_id=last_id))


def _labels_and_samples(engine: Engine) -> None:
    """m@1: 300 old labels (every 3rd wrong) with a field sample each, 20 recent ones;
    m@2: 50 old labels nobody monitored yet; plus 40 old unlabelled samples of m@1."""
    with session_scope(engine) as s:
        for i in range(320):
            at = OLD + timedelta(minutes=i) if i < 300 else NOW - timedelta(hours=1)
            pid = f"p{i}"
            s.add(
                FieldSample(
                    device_id="d1",
                    prediction_id=pid,
                    values=[float(i), 1.0],
                    shape=[2],
                    model="m",
                    version="1",
                    at=at,
                    received_at=at,
                )
            )
            s.add(
                FeedbackLabelRow(
                    device_id="d1",
                    seq=i + 1,
                    prediction_id=pid,
                    label=1,
                    predicted_label=1 if i % 3 else 0,
                    model="m",
                    version="1",
                    at=at,
                    received_at=at,
                )
            )
        for i in range(50):
            s.add(
                FeedbackLabelRow(
                    device_id="d2",
                    seq=i + 1,
                    prediction_id=f"q{i}",
                    label=0,
                    predicted_label=0,
                    model="m",
                    version="2",
                    at=OLD,
                    received_at=OLD,
                )
            )
        for i in range(40):
            s.add(
                FieldSample(
                    device_id="d1",
                    prediction_id=f"u{i}",
                    values=[0.0, 0.0],
                    shape=[2],
                    model="m",
                    version="1",
                    at=OLD,
                    received_at=OLD,
                )
            )


def test_labels_roll_up_and_samples_go_but_unread_and_retrain_rows_stay(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "CHUNK", 64)  # hours span chunks: roll-ups get added to
    _labels_and_samples(engine)
    # monitoring read m@1's labels up to id 250 (ids follow insertion: label i has id i+1);
    # it has no cursor for m@2 yet
    _cursor(engine, stream="feedback", version="1", last_id=250)
    with Session(engine) as s:
        before = live_accuracy(s, model="m", version="1")
    assert (before.n, _count(engine, FeedbackLabelRow), _count(engine, FieldSample)) == (
        320,
        370,
        360,
    )

    labels, samples = prune_feedback(
        engine, older_than=CUTOFF, monitored=True, field_records_kept=100
    )
    # The retrain reads the newest 100 labelled samples of m: p220..p319; their labels stay,
    # and so do labels 251.. (unread); m@2 (no cursor while monitoring runs) stays whole.
    assert labels == 220 and samples == 220 + 40
    assert _count(engine, FeedbackLabelRow, FeedbackLabelRow.version == "1") == 100
    assert _count(engine, FeedbackLabelRow, FeedbackLabelRow.version == "2") == 50
    assert _count(engine, FieldSample) == 100
    with Session(engine) as s:
        rollups = s.exec(select(LabelRollup).order_by(col(LabelRollup.hour))).all()
        after = live_accuracy(s, model="m", version="1")
        like = _like()
        records, _, _, _ = labelled_field_records(s, model="m", like=like, limit=100)
    assert sum(r.labels for r in rollups) == 220 and len(rollups) == 4  # 220 minutes
    assert sum(r.scored for r in rollups) == 220
    assert sum(r.correct for r in rollups) == sum(1 for i in range(220) if i % 3)
    assert all(r.hour.minute == 0 for r in rollups)
    # the all-time accuracy reads the same from raw rows + roll-ups
    assert (after.n, after.accuracy) == (before.n, before.accuracy)
    # what the default retrain would read is all still there
    assert records is not None and len(records) == 100

    # idempotent; without monitoring, versions without a cursor go too
    assert prune_feedback(engine, older_than=CUTOFF, monitored=True, field_records_kept=100) == (
        0,
        0,
    )
    assert prune_feedback(engine, older_than=CUTOFF, field_records_kept=100) == (50, 0)
    assert _count(engine, FeedbackLabelRow) == 100


def _like() -> Any:
    import numpy as np

    from hub.datasets.records import RecordSet

    return RecordSet(
        ids=np.asarray(["a"]),
        features=np.zeros((1, 2), dtype=np.float32),
        labels=np.zeros(1, dtype=np.int64),
        feature_names=["x", "y"],
        label_names=["no", "yes"],
    )


def test_samples_monitoring_may_still_read_stay(engine: Engine) -> None:
    """Samples at or after an unread telemetry window's start (or a pending window's start)
    are what the MMD detector reads: they stay, however old."""
    with session_scope(engine) as s:
        for i in range(10):
            at = OLD + timedelta(minutes=10 * i)
            s.add(
                FieldSample(
                    device_id="d1",
                    prediction_id=f"p{i}",
                    values=[1.0],
                    shape=[1],
                    model="m",
                    version="1",
                    at=at,
                    received_at=at,
                )
            )
        for i in range(3):
            start = OLD + timedelta(minutes=10 * i)
            s.add(
                TelemetryWindowRow(
                    device_id="d1",
                    seq=i + 1,
                    model="m",
                    version="1",
                    window_start=start,
                    window_end=start + timedelta(minutes=10),
                    count=1,
                    errors=0,
                )
            )
    # windows 1 and 2 read; 3 (from minute 20) unread: samples from minute 20 on stay
    _cursor(engine, stream="telemetry", version="1", last_id=2)
    assert prune_feedback(engine, older_than=CUTOFF, monitored=True) == (0, 2)
    # a scope's pending window spans from minute 10: that sample stays as well
    start_ms = int((OLD + timedelta(minutes=10)).timestamp() * 1000)
    with session_scope(engine) as s:
        s.add(
            MonitorCursor(
                stream="telemetry",
                model="m",
                version="1",
                scope="device:d1",
                pending={"n": 5, "start_ms": start_ms},
            )
        )
        cursor = s.get(MonitorCursor, ("telemetry", "m", "1", "*"))
        assert cursor is not None
        cursor.last_id = 3  # all read now
        s.add(cursor)
    assert prune_feedback(engine, older_than=CUTOFF, monitored=True) == (0, 0)
    with session_scope(engine) as s:
        pending = s.get(MonitorCursor, ("telemetry", "m", "1", "device:d1"))
        assert pending is not None
        pending.pending = {}
        s.add(pending)
    assert prune_feedback(engine, older_than=CUTOFF, monitored=True) == (0, 8)


def test_telemetry_past_the_monitoring_cursor_is_never_rolled_up(engine: Engine) -> None:
    with session_scope(engine) as s:
        for i in range(10):
            start = OLD + timedelta(minutes=i)
            for version in ("1", "2"):
                s.add(
                    TelemetryWindowRow(
                        device_id=f"d{version}",
                        seq=i + 1,
                        model="m",
                        version=version,
                        window_start=start,
                        window_end=start + timedelta(minutes=1),
                        count=10,
                        errors=0,
                    )
                )
    first_v1 = 1  # ids alternate v1, v2
    _cursor(engine, stream="telemetry", version="1", last_id=first_v1 + 2 * 5)  # 6 of v1 read
    result = rollup_and_prune(engine, older_than=CUTOFF, monitored=True)
    assert result.rolled_up == 6
    assert _count(engine, TelemetryWindowRow, TelemetryWindowRow.version == "1") == 4
    assert _count(engine, TelemetryWindowRow, TelemetryWindowRow.version == "2") == 10
    assert rollup_and_prune(engine, older_than=CUTOFF).rolled_up == 10  # v2: no monitoring


def _score(**kw: Any) -> MonitorScore:
    base: dict[str, Any] = {
        "kind": "drift",
        "scope": "version:m@1",
        "model": "m",
        "version": "1",
        "detector": "chi2",
        "score": 1.0,
        "threshold": 4.0,
        "n": 200,
    }
    return MonitorScore(**{**base, **kw})


def test_monitor_scores_roll_up_per_series_and_hour_keeping_the_newest(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "CHUNK", 64)  # hours span chunks: roll-ups get added to
    with session_scope(engine) as s:
        for i in range(180):  # 3 hours of a score a minute, two series; one fires
            at = OLD + timedelta(minutes=i)
            s.add(_score(at=at, score=8.0 if i == 70 else 1.0, fired=i == 70, last_row_id=i))
            s.add(_score(at=at, scope="device:d1", detector="ks", threshold=2.0, last_row_id=i))
        s.add(_score(at=NOW, score=0.5, last_row_id=999))  # a recent one
    with Session(engine) as s:
        before = drift_score(s, model="m", version="1")
        before_recent = drift_score(s, model="m", version="1", since=OLD + timedelta(hours=2))
    assert before == 2.0

    deleted = prune_monitor_scores(engine, older_than=CUTOFF)
    # device:d1's newest (old) score stays: it is what the status page shows for that scope
    assert deleted == 180 + 179 and _count(engine, MonitorScore) == 2
    with Session(engine) as s:
        rollups = s.exec(select(MonitorScoreRollup)).all()
        after = drift_score(s, model="m", version="1")
        after_recent = drift_score(s, model="m", version="1", since=OLD + timedelta(hours=2))
    assert len(rollups) == 6 and sum(r.scores for r in rollups) == 359
    version_hours = sorted((r for r in rollups if r.scope == "version:m@1"), key=lambda r: r.hour)
    assert [r.fired for r in version_hours] == [0, 1, 0]
    assert [r.score_max for r in version_hours] == [1.0, 8.0, 1.0]
    assert version_hours[1].ratio_max == 2.0 and version_hours[1].n == 60 * 200
    assert [r.last_row_id for r in version_hours] == [59, 119, 179]
    assert (after, after_recent) == (before, before_recent) == (2.0, 0.5)
    assert prune_monitor_scores(engine, older_than=CUTOFF) == 0


def test_events_go_unless_open_or_still_read(engine: Engine) -> None:
    old, later = OLD - timedelta(days=60), OLD
    with session_scope(engine) as s:
        s.add(
            Rollout(
                id="done",
                model="m",
                version="1",
                bundle_digest="x",
                bundle_size=1,
                selector="",
                state="completed",
                finished_at=old,
            )
        )
        s.add(
            Rollout(
                id="live",
                model="m",
                version="2",
                bundle_digest="y",
                bundle_size=1,
                selector="",
                state="running",
            )
        )
        s.flush()
        s.add(RolloutDevice(rollout_id="live", device_id="d9", command_id="c-live"))
        for rid in ("done", "live"):
            for _ in range(5):
                s.add(RolloutEvent(rollout_id=rid, kind="phase", at=old))
        for i, (rid, cmd) in enumerate(
            [("done", "c1"), ("done", "c2"), ("live", "c3"), ("", "c-live"), ("", "c4")]
        ):
            s.add(
                DeploymentEventRow(
                    event_id=f"e{i}",
                    device_id="d",
                    command_id=cmd,
                    rollout_id=rid,
                    kind="healthy",
                    at=old,
                    received_at=old,
                )
            )
        s.add(Alert(kind="drift", scope="s", score=2, threshold=1, at=old, resolved_at=old))
        s.add(Alert(kind="drift", scope="s", score=2, threshold=1, at=old))  # open
        s.add(Alert(kind="drift", scope="s", score=2, threshold=1, at=old, resolved_at=NOW))
        for v in (1, 2):
            s.add(
                DatasetVersion(
                    name="ds",
                    version=v,
                    digest=f"d{v}",
                    source="t",
                    num_records=1,
                    labelled=True,
                    validation_status="passed",
                    artifact_digest="a",
                    artifact_size=1,
                )
            )
        s.flush()
        for status, dataset in [
            ("finished", 1),
            ("failed", 1),
            ("started", 1),
            ("skipped", 1),
            ("skipped", 2),
        ]:
            s.add(
                TriggerEvent(
                    model_name="m",
                    kind="drift",
                    reason="r",
                    at=old,
                    status=status,
                    dataset_version_id=dataset,
                )
            )
    before = {t: _count(engine, t) for t in (Alert, DeploymentEventRow, RolloutEvent, TriggerEvent)}
    assert list(before.values()) == [3, 5, 10, 5]
    counts = prune_events(engine, older_than=later)
    assert counts == {
        "alert": 1,  # resolved long ago; the open one and the one resolved now stay
        "deployment_event": 3,  # not those of the running rollout (by rollout or command id)
        "rollout_event": 5,  # the finished rollout's
        "trigger_event": 3,  # not the started run, nor the skip of ds's latest version
    }
    with Session(engine) as s:
        kept = s.exec(select(DeploymentEventRow.command_id)).all()
        triggers = s.exec(select(TriggerEvent.status, TriggerEvent.dataset_version_id)).all()
    assert sorted(kept) == ["c-live", "c3"]
    assert sorted(triggers, key=str) == sorted([("started", 1), ("skipped", 2)], key=str)
    assert prune_events(engine, older_than=later) == dict.fromkeys(counts, 0)


def test_run_retention_applies_the_settings(engine: Engine, monkeypatch: Any) -> None:
    _labels_and_samples(engine)
    with session_scope(engine) as s:
        s.add(_score(at=OLD))
        s.add(_score(at=OLD + timedelta(seconds=1)))
    monkeypatch.setenv("EDGELOOP_FEEDBACK_RETENTION_S", "0")  # labels and samples: forever
    monkeypatch.setenv("EDGELOOP_MONITOR_INTERVAL_S", "0")
    policy = RetentionPolicy.from_settings(HubSettings())
    assert policy.feedback_s is None and policy.telemetry_s == 7 * 24 * 3600.0
    assert policy.monitored is False and policy.enabled
    report = run_retention(engine, policy, now=NOW)
    assert (report.labels, report.field_samples, report.monitor_scores) == (0, 0, 1)
    assert report.errors == []
    monkeypatch.setenv("EDGELOOP_FEEDBACK_RETENTION_S", str(30 * 24 * 3600))
    report = run_retention(engine, RetentionPolicy.from_settings(HubSettings()), now=NOW)
    # all of m@1's 320 samples are among the newest 20,000 labelled: they and their labels stay
    assert (report.labels, report.field_samples) == (50, 40)


def test_the_kept_field_records_are_what_the_default_retrain_reads() -> None:
    limit = inspect.signature(labelled_field_records).parameters["limit"].default
    assert limit == FIELD_RECORDS_KEPT == 20_000


def test_with_the_real_monitoring_only_read_rows_go_and_it_reads_on(engine: Engine) -> None:
    """Monitoring reads; retention prunes only what it read; the all-time figures read the
    same; monitoring then reads the rest as if nothing happened."""
    from hub.monitoring import DetectorCache, MonitorConfig, evaluate
    from tests.monitoring.fleetdata import Fleet
    from tests.monitoring.tiny_detector import tiny_factory

    config = MonitorConfig(window_size=200, false_alarm_rate=0.001, min_labels=50)
    cache = DetectorCache(factory=tiny_factory)
    fleet = Fleet(engine=engine).register()
    devices = {"cam-1": "north", "cam-2": "north", "cam-3": "south"}
    fleet.telemetry(devices=devices, windows=10, per_window=50)
    fleet.labels(device="cam-1", n=120, accuracy=0.95)
    first = evaluate(engine, config=config, cache=cache)
    assert (first.rows, first.labels, first.errors) == (30, 120, 0)
    fleet.telemetry(devices=devices, windows=4, per_window=50)  # not read yet
    fleet.labels(device="cam-1", n=60, accuracy=0.5)
    with Session(engine) as s:
        scores = s.exec(select(MonitorScore)).all()
        series = {(r.kind, r.scope, r.detector) for r in scores}
    with Session(engine) as s:
        accuracy_before = live_accuracy(s, model="sensor-clf", version="1")
        drift_before = drift_score(s, model="sensor-clf", version="1")

    later = datetime.now(UTC) + timedelta(days=60)  # every row is past its retention
    report = run_retention(engine, RetentionPolicy(), now=later)
    assert report.errors == []
    assert (report.telemetry_windows, report.labels) == (30, 120)
    assert _count(engine, TelemetryWindowRow) == 12 and _count(engine, FeedbackLabelRow) == 60
    # each series' newest score stays
    assert report.monitor_scores == len(scores) - len(series) > 0
    assert _count(engine, MonitorScore) == len(series)
    with Session(engine) as s:
        accuracy_after = live_accuracy(s, model="sensor-clf", version="1")
        assert drift_score(s, model="sensor-clf", version="1") == drift_before
    assert (accuracy_after.n, accuracy_after.correct) == (180, accuracy_before.correct)

    second = evaluate(engine, config=config, cache=cache)
    assert (second.rows, second.labels, second.errors) == (12, 60, 0)
    report = run_retention(engine, RetentionPolicy(), now=later)
    assert (report.telemetry_windows, report.labels) == (12, 60)


def test_the_loop_runs_retention_until_stopped(engine: Engine) -> None:
    import time

    from hub.retention.service import RetentionLoop

    with session_scope(engine) as s:
        s.add(_score(at=OLD))
        s.add(_score(at=OLD + timedelta(seconds=1)))
    loop = RetentionLoop(engine=engine, policy=RetentionPolicy(), every_s=0.05, first_after_s=0.01)
    loop.start()
    deadline = time.monotonic() + 10  # an upper bound, never a measurement
    while len(loop.reports) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    assert [r.monitor_scores for r in loop.reports[:2]] == [1, 0]
    assert all(r.errors == [] for r in loop.reports)


def test_hub_serve_starts_retention_only_when_a_table_has_one(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub.retention.service import retention_service

    for name in ("TELEMETRY", "FEEDBACK", "MONITOR_SCORE", "EVENT"):
        monkeypatch.setenv(f"EDGELOOP_{name}_RETENTION_S", "0")
    off = HubSettings(data_dir=tmp_path)
    assert not RetentionPolicy.from_settings(off).enabled

    def running() -> bool:
        return any(t.name == "edgeloop-retention" for t in threading.enumerate())

    assert retention_service(off) is None  # nothing to run
    assert not running()
    monkeypatch.setenv("EDGELOOP_EVENT_RETENTION_S", "60")
    service = retention_service(HubSettings(data_dir=tmp_path))
    assert service is not None and service.name == "retention"
    service.start()
    assert running() and service.health()["running"]
    service.stop()
    assert not running()
