"""Continuous-training triggers: schedule, new data, new code, on demand; one run at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine

import hub.triggers as triggers
from hub.core.artifacts import ArtifactStore, FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.errors import Conflict
from hub.datasets import RecordSet
from hub.datasets import service as datasets
from hub.registry import models as registry
from hub.specs import get_spec
from hub.specs.digits import DigitsMLP
from hub.tables import TrainingRun, create_all
from hub.training.service import TrainOutcome
from hub.triggers import TriggerEvent, TriggerKind, TriggerStatus, list_events, set_policy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeRunner:
    """Records calls instead of training (training itself is tested in test_training)."""

    def __init__(self, *, hold: threading.Event | None = None, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.hold, self.fail = hold, fail
        self.entered = threading.Event()

    def __call__(
        self,
        engine: Engine,
        store: ArtifactStore,
        *,
        spec_name: str,
        dataset: str,
        params: Mapping[str, Any] | None = None,
        model_name: str | None = None,
        init_from: str | None = None,
    ) -> TrainOutcome:
        self.calls.append(
            {"spec": spec_name, "dataset": dataset, "params": params, "model": model_name}
            | ({"init_from": init_from} if init_from else {})
        )
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        run = TrainingRun(
            id=f"fake{len(self.calls)}", spec=spec_name, code_version="x", dataset_version_id=1
        )
        return TrainOutcome(
            run=run, model_version=None, metrics={}, candidate=False, dataset_version=dataset
        )


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Engine, FileArtifactStore]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    yield engine, store
    engine.dispose()


def policy(engine: Engine, **overrides: Any) -> None:
    args: dict[str, Any] = {"model_name": "digits-model", "spec": "digits-mlp"}
    args |= {"dataset": "digits", "params": {"epochs": 2, "hidden": 16}} | overrides
    with session_scope(engine) as s:
        triggers.set_policy(s, **args)


def add_version(engine: Engine, store: ArtifactStore, *, broken: bool = False) -> str:
    """Append fresh copies of a random subset of digits; ``broken`` puts them out of range."""
    with session_scope(engine) as s:
        base = datasets.load_records(s, store, version=datasets.get_version(s, ref="digits@1"))
        pick = np.random.default_rng(int(broken)).choice(len(base), 200, replace=False)
        part = base.subset(pick)
        extra = RecordSet(
            ids=np.char.add(part.ids, "-b" if broken else "-new"),
            features=part.features + (100.0 if broken else 0.0),
            labels=part.labels,
            feature_names=part.feature_names,
            label_names=part.label_names,
        )
        version, created = datasets.import_dataset(
            s, store, name="digits", source="test", records=extra, append=True
        )
        assert created and version.validation_status == ("failed" if broken else "passed")
        return version.ref


def kinds(events: list[TriggerEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.status) for e in events]


def test_schedule_fires_once_per_interval(hub: tuple[Engine, FileArtifactStore]) -> None:
    engine, store = hub
    policy(engine, schedule_interval_s=3600, on_new_data=False, on_new_code=False)
    fake = FakeRunner()
    first = triggers.run_triggers(engine, store, now=T0, runner=fake)
    assert kinds(first) == [("schedule", "finished")] and first[0].run_id == "fake1"
    assert "never ran" in first[0].reason
    for minutes in (1, 10, 59):
        assert (
            triggers.run_triggers(engine, store, now=T0 + timedelta(minutes=minutes), runner=fake)
            == []
        )
    again = triggers.run_triggers(engine, store, now=T0 + timedelta(hours=1), runner=fake)
    assert kinds(again) == [("schedule", "finished")]
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(hours=1.5), runner=fake) == []
    assert (
        fake.calls
        == [
            {
                "spec": "digits-mlp",
                "dataset": "digits@1",
                "params": {"epochs": 2, "hidden": 16},
                "model": "digits-model",
            }
        ]
        * 2
    )


def test_first_run_then_new_data_fires_exactly_once(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    policy(engine)
    fake = FakeRunner()
    assert kinds(triggers.run_triggers(engine, store, now=T0, runner=fake)) == [
        ("new_code", "finished")  # first run: no code version trained yet
    ]
    ref = add_version(engine, store)
    later = T0 + timedelta(hours=1)
    with session_scope(engine) as s:
        due = triggers.due_triggers(s, now=later)
        assert [(p.model_name, k) for p, k, _ in due] == [("digits-model", TriggerKind.NEW_DATA)]
    events = triggers.run_triggers(engine, store, now=later, runner=fake)
    assert kinds(events) == [("new_data", "finished")] and ref in events[0].reason
    assert fake.calls[-1]["dataset"] == ref == "digits@2"
    assert triggers.run_triggers(engine, store, now=later + timedelta(hours=5), runner=fake) == []
    assert len(fake.calls) == 2


def test_failed_validation_version_is_skipped_once_with_a_reason(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    policy(engine)
    fake = FakeRunner()
    triggers.run_triggers(engine, store, now=T0, runner=fake)
    ref = add_version(engine, store, broken=True)
    events = triggers.run_triggers(engine, store, now=T0 + timedelta(hours=1), runner=fake)
    assert kinds(events) == [("new_data", "skipped")]
    assert f"{ref} failed validation" in events[0].reason and "override" in events[0].reason
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(hours=2), runner=fake) == []
    assert len(fake.calls) == 1
    with session_scope(engine) as s:  # a person accepts the data: now it trains
        datasets.override_validation(s, ref=ref, reason="sensor recalibrated")
    events = triggers.run_triggers(engine, store, now=T0 + timedelta(hours=3), runner=fake)
    assert kinds(events) == [("new_data", "finished")] and fake.calls[-1]["dataset"] == ref


def test_new_code_fires_once(
    hub: tuple[Engine, FileArtifactStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, store = hub
    policy(engine)
    fake = FakeRunner()
    triggers.run_triggers(engine, store, now=T0, runner=fake)
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(hours=1), runner=fake) == []
    monkeypatch.setattr(DigitsMLP, "code_version", lambda self: "sha256:" + "f" * 64)
    events = triggers.run_triggers(engine, store, now=T0 + timedelta(hours=2), runner=fake)
    assert kinds(events) == [("new_code", "finished")]
    assert events[0].code_version == get_spec("digits-mlp").code_version()
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(hours=3), runner=fake) == []
    assert len(fake.calls) == 2


def test_debounce_suppresses_a_second_trigger_in_the_window(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    policy(engine, debounce_s=600)
    fake = FakeRunner()
    triggers.run_triggers(engine, store, now=T0, runner=fake)
    add_version(engine, store)
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(seconds=599), runner=fake) == []
    with session_scope(engine) as s:
        assert triggers.due_triggers(s, now=T0 + timedelta(seconds=300)) == []
    events = triggers.run_triggers(engine, store, now=T0 + timedelta(seconds=600), runner=fake)
    assert kinds(events) == [("new_data", "finished")] and len(fake.calls) == 2


def test_concurrent_evaluations_start_one_run(hub: tuple[Engine, FileArtifactStore]) -> None:
    engine, store = hub
    policy(engine)
    release = threading.Event()
    fake = FakeRunner(hold=release)
    results: list[list[TriggerEvent]] = []
    first = threading.Thread(
        target=lambda: results.append(triggers.run_triggers(engine, store, now=T0, runner=fake))
    )
    first.start()
    assert fake.entered.wait(10)
    second = triggers.run_triggers(engine, store, now=T0, runner=fake)  # in-process lock
    with pytest.raises(Conflict, match="already training"):
        triggers.trigger_now(engine, store, model_name="digits-model", reason="x", runner=fake)
    release.set()
    first.join(10)
    assert second == [] and len(fake.calls) == 1
    assert kinds(results[0]) == [("new_code", "finished")]


def test_a_started_row_from_another_process_blocks_until_stale(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    policy(engine)
    with session_scope(engine) as s:
        s.add(TriggerEvent(model_name="digits-model", kind="schedule", reason="elsewhere", at=T0))
    fake = FakeRunner()
    assert triggers.run_triggers(engine, store, now=T0 + timedelta(hours=5), runner=fake) == []
    events = triggers.run_triggers(engine, store, now=T0 + timedelta(hours=7), runner=fake)
    assert kinds(events) == [("new_code", "finished")] and len(fake.calls) == 1


def test_on_demand_records_its_reason_ignores_debounce_and_failures_are_kept(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    policy(engine)
    fake = FakeRunner()
    triggers.run_triggers(engine, store, now=T0, runner=fake)
    event = triggers.trigger_now(
        engine, store, model_name="digits-model", reason="new labels reviewed", runner=fake
    )
    assert (event.kind, event.status, event.reason) == (
        "on_demand",
        "finished",
        "new labels reviewed",
    )
    failed = triggers.trigger_now(
        engine, store, model_name="digits-model", reason="retry", runner=FakeRunner(fail=True)
    )
    assert failed.status == TriggerStatus.FAILED and "boom" in failed.detail
    with session_scope(engine) as s:
        history = triggers.list_events(s, model_name="digits-model")
    assert [(e.kind, e.status) for e in history] == [
        ("new_code", "finished"),
        ("on_demand", "finished"),
        ("on_demand", "failed"),
    ]
    assert all(e.reason for e in history)


def test_real_training_registers_a_version(hub: tuple[Engine, FileArtifactStore]) -> None:
    engine, store = hub
    policy(engine, model_name="digits-ct")
    [event] = triggers.run_triggers(engine, store, now=T0)
    assert event.status == TriggerStatus.FINISHED and event.run_id
    assert "registered digits-ct@1" in event.detail
    with session_scope(engine) as s:
        version = registry.get_version(s, ref="digits-ct@1")
        assert version.run_id == event.run_id
        stored = triggers.get_policy(s, model_name="digits-ct")
        assert stored.last_dataset_version_id is not None and stored.last_run_at is not None


def test_the_hub_trigger_loop_starts_due_runs(tmp_path: Path) -> None:
    from hub.triggers.serve import TriggerLoop

    engine = make_engine(f"sqlite:///{tmp_path / 'loop.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
        set_policy(s, model_name="loop-mlp", spec="digits-mlp", dataset="digits")
    calls: list[str] = []

    def runner(_engine: Any, _store: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["dataset"])
        raise RuntimeError("training fault")  # a failing run must not stop the loop

    loop = TriggerLoop(engine=engine, store=store, interval_s=0.05, runner=runner)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while loop.ticks < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        loop.stop()
    assert loop.ticks >= 3 and calls == ["digits@1"]  # one incident, one run (debounce)
    with session_scope(engine) as s:
        assert [e.status for e in list_events(s, model_name="loop-mlp")] == ["failed"]


def test_trigger_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edgeloop_cli import main

    dd = ["--data-dir", str(tmp_path)]
    assert main([*dd, "dataset", "import", "sklearn:digits", "--name", "digits", "--json"]) == 0
    args = ["trigger", "policy", "cli-mlp", "--spec", "digits-mlp", "--dataset", "digits"]
    assert main([*dd, *args, "--param", "epochs=2", "--param", "hidden=16", "--json"]) == 0
    capsys.readouterr()
    assert main([*dd, "trigger", "run", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)["events"]
    assert [(e["kind"], e["status"]) for e in started] == [("new_code", "finished")]
    assert main([*dd, "trigger", "run", "--json"]) == 0  # nothing new: nothing runs
    assert json.loads(capsys.readouterr().out)["events"] == []
    assert main([*dd, "trigger", "now", "cli-mlp", "--reason", "operator", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "operator"
    assert main(["--hub", "http://127.0.0.1:9", "trigger", "run", "--json"]) == 1
