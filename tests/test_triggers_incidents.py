"""Drift and degradation triggers: field data becomes a dataset version, one run per incident,
and a registered version goes to the follow-up (package + canary)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

import hub.triggers as triggers
from hub.core.artifacts import ArtifactStore, FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.datasets import service as datasets
from hub.tables import (
    Alert,
    FeedbackLabelRow,
    FieldSample,
    ModelVersion,
    RegisteredModel,
    TrainingRun,
    create_all,
)
from hub.tables.devices import Device
from hub.training.service import TrainOutcome
from hub.triggers import FollowupResult, TriggerKind, TriggerStatus, list_events
from tests.test_triggers import FakeRunner

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MODEL = "digits-model"
POLICY: dict[str, Any] = {  # drift and degradation only, on 40 labelled field samples
    "model_name": MODEL,
    "spec": "digits-mlp",
    "dataset": "digits",
    "params": {"epochs": 1},
    "on_new_data": False,
    "on_new_code": False,
    "min_field_records": 40,
    "min_incident_records": 0,
    "debounce_s": 0,
}


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Iterator[tuple[Engine, FileArtifactStore]]:
    engine = make_engine(database_url)
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
        triggers.set_policy(s, **POLICY)
    yield engine, store
    engine.dispose()


def field_data(
    engine: Engine,
    store: ArtifactStore,
    *,
    n: int,
    device: str = "cam-1",
    shift: float = 0.0,
    start: datetime = T0,
) -> None:
    """``n`` reservoir samples from digits (shifted by ``shift``), each with a label, taken
    from ``start`` on."""
    with session_scope(engine) as s:
        base = datasets.load_records(s, store, version=datasets.get_version(s, ref="digits@1"))
        rng = np.random.default_rng(n)
        for i in rng.choice(len(base), n, replace=False).tolist():
            pid = f"{device}-p{i}"
            at = start + timedelta(seconds=i)
            values = (base.features[i].ravel() + shift).tolist()
            s.add(
                FieldSample(
                    device_id=device,
                    prediction_id=pid,
                    values=values,
                    shape=[64],
                    predicted_label=0,
                    model=MODEL,
                    version="1",
                    at=at,
                )
            )
            label = int(base.labels[i]) if base.labels is not None else 0
            s.add(
                FeedbackLabelRow(
                    device_id=device,
                    seq=1 + i,
                    prediction_id=pid,
                    label=label,
                    model=MODEL,
                    version="1",
                    at=at,
                )
            )


def alert(engine: Engine, *, kind: str = "drift", version: str = "1", scope: str = "") -> int:
    with session_scope(engine) as s:
        row = Alert(
            kind=kind,
            scope=scope or f"version:{MODEL}@{version}",
            model=MODEL,
            version=version,
            detector="feature_chi2",
            score=40.0,
            threshold=20.0,
            at=T0,
        )
        s.add(row)
        s.flush()
        return int(row.id or 0)


def test_drift_alert_waits_for_field_data_then_trains_once_on_a_new_version(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    runner = FakeRunner()
    first = alert(engine)
    field_data(engine, store, n=10)
    assert triggers.run_triggers(engine, store, now=T0, runner=runner) == []  # 10 < 40 labels
    field_data(engine, store, n=60, device="cam-2")
    events = triggers.run_triggers(engine, store, now=T0, runner=runner)
    assert [(e.kind, e.status) for e in events] == [(TriggerKind.DRIFT, TriggerStatus.FINISHED)]
    assert runner.calls[0]["dataset"] == "digits@2"
    assert events[0].alert_ids == [first]
    with session_scope(engine) as s:
        v2 = datasets.get_version(s, ref="digits@2")
        assert v2.source == f"field:{MODEL}"
        assert v2.num_records == v2.lineage["diff"]["added"] + v2.lineage["diff"]["unchanged"]
        assert v2.lineage["diff"]["added"] == 70
        assert v2.lineage["field"]["devices"] == {"cam-1": 10, "cam-2": 60}
        assert s.get(Alert, first).consumed_by == f"trigger:{events[0].id}"  # type: ignore[union-attr]
    # the same incident goes on (more alerts about version 1): no second run
    alert(engine, scope="device:cam-9")
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(hours=1), runner=runner) == []
    assert len(runner.calls) == 1
    # a new version that drifts is a new incident
    alert(engine, version="2")
    again = triggers.run_triggers(engine, store, now=T0 + timedelta(hours=2), runner=runner)
    assert [e.kind for e in again] == [TriggerKind.DRIFT] and len(runner.calls) == 2


def test_a_false_alarm_that_ended_does_not_swallow_the_drift_after_it(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    """A device's false alarm starts a run and resolves; a drift at a site raised after
    that is a new incident of the same version and starts the next run, within the
    policy's debounce (which holds back everything but incidents)."""
    engine, store = hub
    with session_scope(engine) as s:
        triggers.set_policy(s, **{**POLICY, "debounce_s": 3600})
    runner = FakeRunner()
    field_data(engine, store, n=60)
    false_alarm = alert(engine, scope="device:cam-7")
    first = triggers.run_triggers(engine, store, now=T0, runner=runner)
    assert [e.alert_ids for e in first] == [[false_alarm]]
    # while the false alarm is open, more alerts about version 1 are the same incident
    alert(engine, scope="group:north")
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(minutes=1), runner=runner) == []
    with session_scope(engine) as s:
        for found in s.exec(select(Alert)).all():  # the monitor resolves them
            found.resolved_at = T0 + timedelta(minutes=2)
            s.add(found)
        real = Alert(
            kind="drift",
            scope="group:berlin",
            model=MODEL,
            version="1",
            detector="mmd",
            score=3.0,
            threshold=1.0,
            at=T0 + timedelta(minutes=3),
        )
        s.add(real)
        s.flush()
        real_id = int(real.id or 0)
    again = triggers.run_triggers(engine, store, now=T0 + timedelta(minutes=4), runner=runner)
    assert [(e.kind, e.alert_ids) for e in again] == [(TriggerKind.DRIFT, [real_id])]
    assert len(runner.calls) == 2


def test_degradation_goes_before_drift_and_both_are_answered(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    field_data(engine, store, n=50)
    drift, degraded = alert(engine), alert(engine, kind="degradation")
    events = triggers.run_triggers(engine, store, now=T0, runner=FakeRunner())
    assert [e.kind for e in events] == [TriggerKind.DEGRADATION]
    assert sorted(events[0].alert_ids) == sorted([drift, degraded])
    assert "degradation alert" in events[0].reason


def test_shifted_field_data_is_overridden_with_the_reason_and_trained_on(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    field_data(engine, store, n=80, shift=6.0)  # way out of the training distribution
    alert(engine)
    events = triggers.run_triggers(engine, store, now=T0, runner=FakeRunner())
    assert [e.status for e in events] == [TriggerStatus.FINISHED]
    with session_scope(engine) as s:
        v2 = datasets.get_version(s, ref="digits@2")
        assert v2.validation_status == "overridden"
        assert "drift alert" in (v2.override_reason or "")
    assert "overridden" in events[0].detail


def test_disabled_drift_trigger_ignores_alerts(hub: tuple[Engine, FileArtifactStore]) -> None:
    engine, store = hub
    with session_scope(engine) as s:
        triggers.set_policy(
            s, model_name=MODEL, spec="digits-mlp", dataset="digits", on_drift=False,
            on_new_data=False, on_new_code=False, debounce_s=0,
        )  # fmt: skip
    field_data(engine, store, n=50)
    alert(engine)
    assert triggers.run_triggers(engine, store, now=T0, runner=FakeRunner()) == []


class RegisteringRunner(FakeRunner):
    def __call__(self, engine: Engine, store: ArtifactStore, **kw: Any) -> TrainOutcome:
        super().__call__(engine, store, **kw)
        mv = ModelVersion(model_name=MODEL, version=7, artifact_digest="x", artifact_size=1)
        return TrainOutcome(
            run=TrainingRun(id="r7", spec="s", code_version="c", dataset_version_id=1),
            model_version=mv,
            metrics={},
            candidate=True,
            dataset_version=kw["dataset"],
        )


def test_a_registered_version_goes_to_the_followup_with_the_canary_settings(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    calls: list[dict[str, Any]] = []

    def followup(
        engine: Engine, store: ArtifactStore, *, model: str, version: int, canary: Mapping[str, Any]
    ) -> FollowupResult:
        calls.append({"model": model, "version": version, "canary": dict(canary)})
        return FollowupResult(bundle_digest="sha256:" + "a" * 64, rollout_id="r-1", summary="ok")

    with session_scope(engine) as s:
        triggers.set_policy(
            s, model_name=MODEL, spec="digits-mlp", dataset="digits", on_new_data=False,
            on_new_code=False, debounce_s=0, min_field_records=10, min_incident_records=0,
            canary={"selector": "group=canary", "phases": "1,100%"},
        )  # fmt: skip
    field_data(engine, store, n=20)
    alert(engine)
    events = triggers.run_triggers(
        engine, store, now=T0, runner=RegisteringRunner(), followup=followup
    )
    # an incident's canary compares with the previous version since the incident's first alert
    canary = {
        "selector": "group=canary",
        "phases": "1,100%",
        "gates": {"baseline_since": T0.isoformat()},
    }
    assert calls == [{"model": MODEL, "version": 7, "canary": canary}]
    assert events[0].rollout_id == "r-1" and events[0].model_version == "7"
    with session_scope(engine) as s:
        assert list_events(s, model_name=MODEL)[-1].rollout_id == "r-1"


def test_an_incident_run_waits_for_the_new_regime_and_learns_only_it(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    """``min_incident_records``: labelled samples from the alerted group's devices, taken after
    the first alert, before the run; the run's field data are those taken since the alert."""
    engine, store = hub
    with session_scope(engine) as s:
        s.add_all([Device(id="cam-1", group="north"), Device(id="cam-2", group="south")])
        policy = triggers.get_policy(s, model_name=MODEL)
        policy.min_incident_records = 50
        s.add(policy)
    field_data(engine, store, n=200, device="cam-1", start=T0 - timedelta(hours=1))  # before
    alert(engine, scope="group:north")
    field_data(engine, store, n=100, device="cam-2", start=T0)  # after, but another group
    field_data(engine, store, n=30, device="cam-1", start=T0)  # after, but too few yet
    runner = FakeRunner()
    assert triggers.run_triggers(engine, store, now=T0, runner=runner) == []
    field_data(engine, store, n=60, device="cam-1", start=T0 + timedelta(minutes=5))
    events = triggers.run_triggers(engine, store, now=T0, runner=runner)
    assert [e.status for e in events] == [TriggerStatus.FINISHED]
    with session_scope(engine) as s:
        v2 = datasets.get_version(s, ref="digits@2")
        devices = v2.lineage["field"]["devices"]
    # only what was taken since the alert: cam-1's 30 + 60 (ids may repeat), cam-2's 100
    assert devices["cam-2"] == 100 and 30 < devices["cam-1"] <= 90, devices


def test_an_incident_run_fine_tunes_the_drifted_version(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    with session_scope(engine) as s:
        s.add(RegisteredModel(name=MODEL))
        s.flush()
        s.add(ModelVersion(model_name=MODEL, version=1, artifact_digest="x", artifact_size=1))
        policy = triggers.get_policy(s, model_name=MODEL)
        policy.fine_tune_epochs = 4
        s.add(policy)
    field_data(engine, store, n=50)
    alert(engine)
    runner = FakeRunner()
    [event] = triggers.run_triggers(engine, store, now=T0, runner=runner)
    assert runner.calls[0]["init_from"] == f"{MODEL}@1"
    assert runner.calls[0]["params"]["epochs"] == 4
    assert f"fine-tuned from {MODEL}@1 (4 epochs)" in event.detail
    # a new-data or on-demand run trains afresh
    with session_scope(engine) as s:
        triggers.set_policy(
            s, model_name=MODEL, spec="digits-mlp", dataset="digits", debounce_s=0,
            on_new_code=False,
        )  # fmt: skip
    field_data(engine, store, n=50, device="cam-7", start=T0 + timedelta(minutes=1))
    triggers.trigger_now(engine, store, model_name=MODEL, reason="test", runner=runner)
    assert "init_from" not in runner.calls[-1]
