"""Promotion needs evidence (issue #21): a rollout whose gates had no data completes but
leaves ``production`` where it was; an operator promotes it once the data is there
(verified) or anyway (recorded unverified); the rollout, the alias history, the API and the
CLI all say which. A real database (SQLite and PostgreSQL), the real controller publishing
to a real Mosquitto; device answers and telemetry are rows as the ingest stores them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from edgeloop_cli import main
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.errors import Conflict, InvalidInput
from hub.mqtt.broker import EmbeddedBroker
from hub.registry import models as registry
from hub.rollouts import service
from hub.rollouts.controller import RolloutController
from hub.rollouts.gates import merged_gates
from hub.rollouts.views import rollout_view
from hub.tables import (
    DeploymentEventRow,
    Device,
    FeedbackLabelRow,
    TelemetryWindowRow,
    create_all,
    drop_all,
)
from hub.tables.registry import AliasMove
from hub.tables.rollouts import RolloutEvent

MODEL = "m"
DEVICES = ["d0", "d1", "d2"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    create_all(eng)
    yield eng
    drop_all(eng)
    eng.dispose()


def _world(engine: Engine, root: Path, *, serving: bool = True) -> None:
    """``m`` versions 1 and 2 (production -> 1, by hand), three devices serving m@1 (or,
    not ``serving``, nothing yet)."""
    store = FileArtifactStore(root=root / "artifacts")
    with session_scope(engine) as s:
        for n in (1, 2):
            registry.register_version(s, store, model_name=MODEL, data=f"model {n}".encode())
        registry.set_alias(s, model_name=MODEL, alias="production", version=1)
        for d in DEVICES:
            state: dict[str, Any] = {"online": True}
            if serving:
                state["active"] = {"model": MODEL, "version": "1", "status": "SLOT_STATUS_ACTIVE"}
            s.add(Device(id=d, online=True, state=state))


def _create(engine: Engine, **kwargs: Any) -> str:
    with session_scope(engine) as s:
        return service.create_rollout(
            s,
            model=MODEL,
            version="2",
            selector="all",
            phases="100%",
            bundle_digest="sha256:" + "ab" * 32,
            bundle_size=10,
            bake_s=0,
            **kwargs,
        ).id


def _telemetry(engine: Engine, version: str, *, per_device: int = 30) -> None:
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        for d in DEVICES:
            s.add(
                TelemetryWindowRow(
                    device_id=d,
                    seq=int(version) * 1000 + uuid.uuid4().int % 1000,
                    model=MODEL,
                    version=version,
                    window_start=now - timedelta(seconds=10),
                    window_end=now,
                    count=per_device,
                    latency={"edges": [1.0, 5.0], "counts": [per_device, 0, 0]},
                )
            )


def _labels(engine: Engine, version: str, *, per_device: int) -> None:
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        for d in DEVICES:
            for i in range(per_device):
                s.add(
                    FeedbackLabelRow(
                        device_id=d,
                        seq=i,
                        prediction_id=f"{d}-{version}-{i}",
                        label=i % 3,
                        predicted_label=i % 3,
                        model=MODEL,
                        version=version,
                        at=now,
                    )
                )


def _run_to_completion(engine: Engine, controller: RolloutController, rollout_id: str) -> None:
    """Tick: the devices are commanded (published to the broker), answer healthy, and the
    last phase is decided."""
    controller.tick()
    with session_scope(engine) as s:
        for d in service.devices_of(s, rollout_id=rollout_id):
            assert d.command_id, d
            s.add(
                DeploymentEventRow(
                    event_id=uuid.uuid4().hex,
                    device_id=d.device_id,
                    command_id=d.command_id,
                    rollout_id=rollout_id,
                    kind="healthy",
                    at=datetime.now(UTC),
                )
            )
    controller.tick()
    with Session(engine) as s:
        assert service.get_rollout(s, rollout_id=rollout_id).state == "completed"


@pytest.fixture
def controller(engine: Engine, mosquitto: EmbeddedBroker) -> Iterator[RolloutController]:
    ctl = RolloutController(
        engine=engine,
        mqtt_url=mosquitto.url,
        artifact_endpoint="127.0.0.1:1",
        fleet=f"promo-{uuid.uuid4().hex[:8]}",
    )
    ctl.publisher.start()
    try:
        yield ctl
    finally:
        ctl.publisher.stop()


def _production(engine: Engine) -> int:
    with Session(engine) as s:
        return registry.aliases_of(s, model_name=MODEL)["production"]


def _moves(engine: Engine) -> list[AliasMove]:
    with Session(engine) as s:
        return list(registry.alias_history(s, model_name=MODEL))


def _view(engine: Engine, rollout_id: str) -> dict[str, Any]:
    with Session(engine) as s:
        return rollout_view(s, service.get_rollout(s, rollout_id=rollout_id))


def test_no_evidence_leaves_production_until_the_data_comes(
    engine: Engine, controller: RolloutController, tmp_path: Path
) -> None:
    _world(engine, tmp_path)
    rid = _create(engine)
    _run_to_completion(engine, controller, rid)  # no telemetry: every data gate insufficient
    view = _view(engine, rid)
    promotion = view["promotion"]
    assert promotion["status"] == "withheld" and not promotion["promoted"]
    assert not promotion["verified"] and promotion["alias"] == "production"
    evidence = promotion["evidence"]
    assert evidence["missing"] == ["error_rate"] and evidence["required"] == ["error_rate"]
    assert not evidence["labels_flow"]  # no labels from these devices: accuracy not required
    gates = evidence["gates"]
    assert {gates[g] for g in ("error_rate", "latency_p95", "accuracy", "shadow_agreement")} == {
        "insufficient"
    }
    assert gates["install_failure_rate"] == "passed" and gates["drift"] == "passed"
    assert "production not moved: no data for error_rate" in view["reason"]
    withheld = [e for e in view["events"] if e["kind"] == "promotion_withheld"]
    assert len(withheld) == 1 and f"edgeloop rollout promote {rid}" in withheld[0]["detail"]
    assert _production(engine) == 1 and len(_moves(engine)) == 1  # only the move by hand

    with session_scope(engine) as s, pytest.raises(Conflict, match="no data for error_rate"):
        service.promote_now(s, rollout_id=rid)
    _telemetry(engine, "2")  # the candidate's windows arrive: the error-rate gate has data
    with session_scope(engine) as s:
        service.promote_now(s, rollout_id=rid, reason="telemetry is in")
    assert _production(engine) == 2
    by_hand, promoted = _moves(engine)
    assert (by_hand.verified, by_hand.rollout_id) == (None, "")
    assert (promoted.from_version, promoted.to_version) == (1, 2)
    assert promoted.rollout_id == rid and promoted.verified is True
    assert promoted.evidence["gates"]["error_rate"] == "passed"
    view = _view(engine, rid)
    assert view["promotion"]["status"] == "verified" and view["promotion"]["promoted"]
    assert view["promotion"]["override"] == ""
    with session_scope(engine) as s, pytest.raises(Conflict, match="already moved"):
        service.promote_now(s, rollout_id=rid)


def test_a_withheld_promotion_never_moves_the_alias_back(
    engine: Engine, controller: RolloutController, tmp_path: Path
) -> None:
    _world(engine, tmp_path)
    rid = _create(engine)
    _run_to_completion(engine, controller, rid)
    assert _view(engine, rid)["promotion"]["status"] == "withheld"
    with session_scope(engine) as s:  # meanwhile production moved on (by hand, here)
        registry.set_alias(s, model_name=MODEL, alias="production", version=1)
    with session_scope(engine) as s, pytest.raises(Conflict, match="was moved since"):
        service.promote_now(s, rollout_id=rid, unverified=True)
    assert _production(engine) == 1


def test_where_labels_flow_the_accuracy_gate_needs_data_and_an_override_is_unverified(
    engine: Engine, controller: RolloutController, tmp_path: Path
) -> None:
    _world(engine, tmp_path)
    _labels(engine, "1", per_device=10)  # labels flow from these devices (baseline: 30)
    rid = _create(engine)
    _telemetry(engine, "2")
    _labels(engine, "2", per_device=2)  # 6 candidate labels: fewer than min_labels (20)
    _run_to_completion(engine, controller, rid)
    promotion = _view(engine, rid)["promotion"]
    assert promotion["status"] == "withheld"
    evidence = promotion["evidence"]
    assert evidence["labels_flow"] and evidence["required"] == ["error_rate", "accuracy"]
    assert evidence["missing"] == ["accuracy"] and evidence["gates"]["error_rate"] == "passed"
    assert evidence["previous_versions"] == ["1"]
    assert _production(engine) == 1

    with session_scope(engine) as s:
        service.promote_now(s, rollout_id=rid, unverified=True, reason="labels are late today")
    assert _production(engine) == 2
    move = _moves(engine)[-1]
    assert move.rollout_id == rid and move.verified is False
    assert move.evidence["missing"] == ["accuracy"]
    view = _view(engine, rid)
    promotion = view["promotion"]
    assert promotion["status"] == "unverified" and promotion["promoted"]
    assert promotion["override"] == "labels are late today"
    assert "unverified" in promotion["detail"] and "no data for accuracy" in promotion["detail"]
    kinds = [e["kind"] for e in view["events"]]
    assert kinds[-2:] == ["promote_requested", "promoted"]


def test_enough_labels_verify_the_promotion_at_completion(
    engine: Engine, controller: RolloutController, tmp_path: Path
) -> None:
    _world(engine, tmp_path)
    _labels(engine, "1", per_device=10)
    rid = _create(engine)
    _telemetry(engine, "2")
    _labels(engine, "2", per_device=10)
    _run_to_completion(engine, controller, rid)
    promotion = _view(engine, rid)["promotion"]
    assert promotion["status"] == "verified" and promotion["promoted"]
    assert promotion["evidence"]["gates"]["accuracy"] == "passed"
    assert _production(engine) == 2 and _moves(engine)[-1].verified is True


def test_a_first_deployment_with_labels_is_verified_on_its_error_rate(
    engine: Engine, controller: RolloutController, tmp_path: Path
) -> None:
    """Devices that served no version of the model before: the accuracy gate has nothing to
    compare with (it can never have data), so labels flowing do not make it required."""
    _world(engine, tmp_path, serving=False)
    rid = _create(engine)
    _telemetry(engine, "2")
    _labels(engine, "2", per_device=10)
    _run_to_completion(engine, controller, rid)
    promotion = _view(engine, rid)["promotion"]
    evidence = promotion["evidence"]
    assert evidence["labels_flow"] and evidence["previous_versions"] == []
    assert (
        evidence["required"] == ["error_rate"] and evidence["gates"]["accuracy"] == "insufficient"
    )
    assert promotion["status"] == "verified" and _production(engine) == 2


def test_promote_unverified_moves_the_alias_and_records_it(
    engine: Engine, controller: RolloutController, tmp_path: Path
) -> None:
    _world(engine, tmp_path)
    rid = _create(engine, gates={"promote_unverified": True})
    _run_to_completion(engine, controller, rid)
    view = _view(engine, rid)
    assert view["promotion"]["status"] == "unverified" and view["promotion"]["promoted"]
    assert "promote_unverified is set" in view["promotion"]["detail"]
    assert view["reason"] == "every phase passed its gates"
    assert _production(engine) == 2
    move = _moves(engine)[-1]
    assert move.verified is False and move.evidence["missing"] == ["error_rate"]
    with Session(engine) as s:
        promoted = s.exec(
            select(RolloutEvent).where(
                RolloutEvent.rollout_id == rid, RolloutEvent.kind == "promoted"
            )
        ).one()
    assert promoted.data["verified"] is False


def test_evidence_settings_are_checked() -> None:
    cfg = merged_gates({})
    assert cfg["promotion_evidence"] == ["error_rate", "accuracy_where_labelled"]
    assert cfg["promote_unverified"] is False
    assert merged_gates({"promotion_evidence": ["latency_p95"]})["promotion_evidence"] == [
        "latency_p95"
    ]
    with pytest.raises(InvalidInput, match="promote_unverified"):
        merged_gates({"promotion_evidence": []})
    with pytest.raises(InvalidInput, match="promotion_evidence"):
        merged_gates({"promotion_evidence": ["accuracy_sometimes"]})
    with pytest.raises(InvalidInput, match="true or false"):
        merged_gates({"promote_unverified": "yes"})


def _cli(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, str]:
    code = main(["--data-dir", str(data_dir), *args])
    return code, capsys.readouterr().out


def test_cli_and_api_show_the_promotion(
    tmp_path: Path,
    mosquitto: EmbeddedBroker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgeloop_cli import output

    monkeypatch.setattr(output.stdout, "width", 400)  # a wide terminal: no cell cut short
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    ctl = RolloutController(
        engine=engine,
        mqtt_url=mosquitto.url,
        artifact_endpoint="127.0.0.1:1",
        fleet=f"promo-{uuid.uuid4().hex[:8]}",
    )
    ctl.publisher.start()
    try:
        _world(engine, tmp_path)
        rid = _create(engine)
        _run_to_completion(engine, ctl, rid)
    finally:
        ctl.publisher.stop()
        engine.dispose()

    code, out = _cli(capsys, tmp_path, "rollout", "list", "--json")
    (row,) = json.loads(out)["rollouts"]
    assert code == 0 and row["promotion"]["status"] == "withheld"
    code, out = _cli(capsys, tmp_path, "rollout", "list")
    assert code == 0 and "withheld" in out and "{" not in out
    code, out = _cli(capsys, tmp_path, "rollout", "show", rid)
    assert code == 0 and "withheld (production)" in out and "no data for error_rate" in out
    code, out = _cli(capsys, tmp_path, "rollout", "promote", rid, "--json")
    assert code == 1 and json.loads(out)["code"] == "conflict"
    assert "--unverified" in json.loads(out)["error"]
    code, out = _cli(
        capsys, tmp_path, "rollout", "promote", rid, "--unverified", "--reason", "demo day"
    )
    assert code == 0 and "UNVERIFIED" in out
    code, out = _cli(capsys, tmp_path, "model", "history", MODEL, "--json")
    moves = json.loads(out)["moves"]
    assert code == 0 and [m["verified"] for m in moves] == [None, False]
    assert moves[1]["rollout_id"] == rid and moves[1]["evidence"]["missing"] == ["error_rate"]
    code, out = _cli(capsys, tmp_path, "model", "history", MODEL)
    assert code == 0 and "by hand" in out and "UNVERIFIED: no data for error_rate" in out
