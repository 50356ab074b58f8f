"""Labels are input from the field: the consensus check, the share cap, the quarantine through
the real trigger path (SQLite and PostgreSQL), the canary gate, the API, CLI and dashboard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits
from sqlalchemy.engine import Engine

import hub.triggers as triggers
from edgeloop_cli import main
from hub.api import create_app
from hub.core.artifacts import ArtifactStore, FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.errors import Conflict
from hub.core.settings import HubSettings
from hub.datasets import service as datasets
from hub.rollouts.gates import DEFAULT_GATES, Scope, quality_gates
from hub.tables import Alert, Device, FeedbackLabelRow, FieldSample, LabelQuarantine, create_all
from hub.tables.rollouts import Rollout, RolloutDevice
from hub.triggers.label_quality import cap_shares, consensus_check, far_beyond_chance, share_cap
from simulators.scenario import DriftSpec
from simulators.sensors import DataSource, Drift
from tests.test_triggers import FakeRunner

MODEL = "digits-model"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
_DIGITS = load_digits()
X = _DIGITS.images.reshape(len(_DIGITS.images), -1).astype(np.float32)
Y = _DIGITS.target.astype(np.int64)
SOURCE = DataSource.from_arrays(_DIGITS.images, _DIGITS.target)
ROTATED = Drift(spec=DriftSpec(kind="rotation", intensity=0.25))


def device_data(
    kind: str, index: npt.NDArray[np.int64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """One device's inputs and labels: ``clean``, ``rotated`` (its camera turned 22.5
    degrees: true labels, shifted inputs), ``wrong`` (a random wrong label for every input),
    ``plus1`` (label + 1: wrong but self-consistent), ``noisy`` (5% random labels)."""
    x, y = X[index].copy(), Y[index].copy()
    if kind == "rotated":
        x = ROTATED.transform(x, source=SOURCE, rng=rng).reshape(len(x), -1)
    elif kind == "wrong":
        y = (y + rng.integers(1, 10, len(y))) % 10
    elif kind == "plus1":
        y = (y + 1) % 10
    elif kind == "noisy":
        flip = rng.random(len(y)) < 0.05
        y = np.where(flip, rng.integers(0, 10, len(y)), y)
    return x, y


def fleet(
    kinds: list[str], *, n: int | list[int] = 150, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[str]]:
    """Disjoint digits per device (no device sees another's exact inputs)."""
    rng = np.random.default_rng(seed)
    sizes = n if isinstance(n, list) else [n] * len(kinds)
    order = rng.permutation(len(X))
    xs, ys, devices, at = [], [], [], 0
    for i, (kind, size) in enumerate(zip(kinds, sizes, strict=True)):
        x, y = device_data(kind, order[at : at + size], rng)
        at += size
        xs.append(x)
        ys.append(y)
        devices += [f"{kind}-{i}"] * size
    return np.concatenate(xs), np.concatenate(ys), devices


def test_the_consensus_separates_wrong_labels_from_shifted_inputs() -> None:
    site = fleet(["clean"] * 6 + ["rotated"] * 3 + ["wrong"])
    lone = fleet(["clean"] * 8 + ["rotated", "plus1"], seed=1)
    for features, labels, devices in (site, lone):
        stats = consensus_check(features, labels, devices)
        rates = {d: round(s.rate, 3) for d, s in stats.items()}
        flagged = {d for d, s in stats.items() if far_beyond_chance(s)}
        assert flagged == {d for d in stats if d.startswith(("wrong", "plus1"))}, rates
        for d, s in stats.items():
            if d.startswith(("clean", "rotated")):
                assert s.rate <= 0.1 and s.p_value == 1.0, rates
            else:
                assert s.rate >= 0.95 and s.labels >= 100 and s.p_value < 1e-30, rates
    # the lone rotated device's inputs look like nobody else's: few of its labels are judged
    stats = consensus_check(*lone)
    assert stats["rotated-8"].labels < 0.3 * 150 < stats["clean-0"].labels


def test_honest_fleets_are_not_quarantined() -> None:
    """The stated false-quarantine rate is 1e-3 per evaluation; 40 honest fleets of 10 devices
    (label noise, a rotated site, uneven sizes) quarantine nobody, and no p-value comes near."""
    smallest = 1.0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        kinds = ["noisy"] * 6 + ["rotated"] * int(rng.integers(0, 4))
        kinds += ["clean"] * (10 - len(kinds))
        sizes = rng.integers(20, 170, len(kinds)).tolist()
        stats = consensus_check(*fleet(kinds, n=sizes, seed=seed))
        assert not [d for d, s in stats.items() if far_beyond_chance(s)], seed
        smallest = min(smallest, *(s.p_value for s in stats.values()))
    assert smallest > 0.1


def test_too_few_devices_have_no_consensus() -> None:
    assert consensus_check(*fleet(["clean", "wrong"])) == {}


def test_share_cap_keeps_each_device_under_the_cap_and_the_newest_records() -> None:
    assert share_cap(1, 0.1) == 1.0 and share_cap(4, 0.1) == 0.5 and share_cap(50, 0.1) == 0.1
    devices = ["busy"] * 100 + [f"d{i}" for i in range(10) for _ in range(10)]
    cap = share_cap(11, 0.1)
    keep = cap_shares(devices, cap=cap)
    kept = [d for d, k in zip(devices, keep, strict=True) if k]
    assert kept.count("busy") == 22  # the largest c with c <= 2/11 * (c + 100)
    assert 22 / len(kept) <= cap < 23 / (len(kept) + 1)
    assert keep[:22].all() and not keep[22:100].any()  # newest (first) kept
    assert keep[100:].all()
    assert cap_shares(["a", "b", "c"], cap=2 / 3).all()
    rng = np.random.default_rng(0)
    for _ in range(200):
        owners = [f"d{i}" for i in rng.integers(0, int(rng.integers(1, 30)), 300)]
        c = share_cap(len(set(owners)), 0.1)
        k = cap_shares(owners, cap=c)
        chosen = [d for d, m in zip(owners, k, strict=True) if m]
        assert chosen and max(chosen.count(d) for d in set(chosen)) <= c * len(chosen) + 1e-9
        assert set(chosen) == set(owners)


# --- the trigger path ---------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Iterator[tuple[Engine, FileArtifactStore]]:
    engine = make_engine(database_url)
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
        triggers.set_policy(
            s,
            model_name=MODEL,
            spec="digits-mlp",
            dataset="digits",
            params={"epochs": 1},
            on_new_data=False,
            on_new_code=False,
            min_field_records=40,
            min_incident_records=0,
            debounce_s=0,
        )
    yield engine, store
    engine.dispose()


def send(
    engine: Engine,
    devices: dict[str, tuple[str, int]],
    *,
    seed: int = 0,
    at: datetime = T0,
) -> None:
    """Field samples with labels from each device: ``{device: (kind, how many)}``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    start = 0
    with session_scope(engine) as s:
        for device, (kind, n) in devices.items():
            x, y = device_data(kind, order[start : start + n], rng)
            start += n
            for i in range(n):
                pid = f"{device}-s{seed}-p{i}"
                when = at + timedelta(seconds=i)
                s.add(
                    FieldSample(
                        device_id=device, prediction_id=pid, values=x[i].tolist(), shape=[64],
                        predicted_label=int(Y[0]), model=MODEL, version="1", at=when,
                    )
                )  # fmt: skip
                s.add(
                    FeedbackLabelRow(
                        device_id=device, seq=i + 1, prediction_id=pid, label=int(y[i]),
                        model=MODEL, version="1", at=when,
                    )
                )  # fmt: skip


def drift_alert(engine: Engine, *, version: str = "1") -> None:
    with session_scope(engine) as s:
        s.add(
            Alert(
                kind="drift", scope=f"version:{MODEL}@{version}", model=MODEL, version=version,
                detector="feature_chi2", score=40.0, threshold=20.0, at=T0,
            )
        )  # fmt: skip


def field_version(
    engine: Engine, store: ArtifactStore, ref: str
) -> tuple[dict[str, Any], list[str]]:
    with session_scope(engine) as s:
        version = datasets.get_version(s, ref=ref)
        ids = datasets.load_records(s, store, version=version).ids.tolist()
        return dict(version.lineage["field"]), [i for i in ids if i.startswith("field:")]


CLEAN = {f"cam-{i}": ("clean", 60) for i in range(6)}


def test_a_hostile_device_is_quarantined_left_out_and_recorded_in_lineage(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    send(engine, {**CLEAN, "evil": ("wrong", 200), "busy": ("clean", 300)})
    drift_alert(engine)
    [event] = triggers.run_triggers(engine, store, now=T0, runner=FakeRunner())
    assert event.status == "finished"
    assert "labels quarantined: evil" in event.detail and "156 records over" in event.detail
    field, ids = field_version(engine, store, "digits@2")
    assert field["quarantined_devices"] == ["evil"]
    assert field["label_check"]["newly_quarantined"] == ["evil"]
    assert not [i for i in ids if i.startswith("field:evil:")]
    # 7 devices left: cap 2/7; busy keeps the largest c with c <= 2/7 * (360 + c): 144, newest
    assert field["device_share_cap"] == pytest.approx(2 / 7, abs=1e-6)
    assert field["capped_devices"] == {"busy": 300 - 144}
    assert field["devices"]["busy"] == 144 and field["records"] == 360 + 144
    busy = sorted(int(i.rsplit("-p", 1)[1]) for i in ids if i.startswith("field:busy:"))
    assert busy == list(range(300 - 144, 300))  # the newest 144 samples
    with session_scope(engine) as s:
        [row] = triggers.list_quarantine(s, model=MODEL)
        assert row.device_id == "evil" and row.rate > 0.95 and row.p_value < 1e-3
        assert "disagree with the labels other devices gave" in row.reason
        assert triggers.quarantined_devices(s, model=MODEL) == {"evil"}

    # an operator lifts it: its old labels are trusted, new ones are tested again
    with session_scope(engine) as s:
        with pytest.raises(Conflict):  # cam-1 exists, it is just not quarantined
            triggers.lift_quarantine(s, device_id="cam-1", reason="x")
        triggers.lift_quarantine(s, device_id="evil", reason="relabelled by hand")
    send(engine, {"cam-9": ("clean", 40)}, seed=1)
    drift_alert(engine, version="2")
    triggers.run_triggers(engine, store, now=T0 + timedelta(hours=1), runner=FakeRunner())
    field, ids = field_version(engine, store, "digits@3")
    assert field["quarantined_devices"] == [] and field["devices"]["evil"] > 0
    trusted = field["devices"]["evil"]
    assert field["label_check"]["newly_quarantined"] == []
    later = datetime.now(UTC) + timedelta(minutes=5)
    send(engine, {"evil": ("wrong", 80), "cam-8": ("clean", 40)}, seed=2, at=later)
    drift_alert(engine, version="3")
    triggers.run_triggers(engine, store, now=T0 + timedelta(hours=2), runner=FakeRunner())
    field, ids = field_version(engine, store, "digits@4")
    assert field["quarantined_devices"] == ["evil"]
    # the records digits@3 took while it was trusted are dropped again (and busy's over
    # the new cap): the bound holds for the version's field records, not just the new ones
    assert field["dropped_from_parent"] >= trusted > 0
    per_device = {d: sum(i.startswith(f"field:{d}:") for i in ids) for d in field["devices"]}
    assert per_device == field["devices"]
    assert max(per_device.values()) <= field["device_share_cap"] * len(ids)
    assert not [i for i in ids if i.startswith("field:evil:")]
    assert "cam-8" in field["devices"]


def test_quarantined_labels_are_left_out_of_the_canary_accuracy_gate(database_url: str) -> None:
    engine = make_engine(database_url)
    create_all(engine)
    start = datetime.now(UTC) - timedelta(minutes=1)

    def labels(dev: str, version: str, right: int, wrong: int) -> list[FeedbackLabelRow]:
        return [
            FeedbackLabelRow(
                device_id=dev, seq=1, prediction_id=f"{dev}-{version}-{i}", label=1,
                predicted_label=1 if i < right else 2, model="m", version=version, at=start,
            )
            for i in range(right + wrong)
        ]  # fmt: skip

    rollout = Rollout(
        id="ro-q", model="m", version="2", bundle_digest="sha256:x", bundle_size=1,
        selector="all", created_at=start,
    )  # fmt: skip
    devs = [
        RolloutDevice(
            rollout_id="ro-q", device_id=d, phase=0, state="healthy", previous_model="m",
            previous_version="1",
        )
        for d in ("d0", "evil")
    ]  # fmt: skip
    with session_scope(engine) as s:
        s.add(rollout)
        s.add_all(devs)
        s.add_all(labels("d0", "1", 45, 5) + labels("d0", "2", 40, 0) + labels("evil", "2", 0, 60))
    scope = Scope(rollout=rollout, devices=devs, since=start, now=datetime.now(UTC))

    def accuracy() -> float | None:
        with session_scope(engine) as s:
            [gate] = [g for g in quality_gates(s, scope, DEFAULT_GATES) if g.name == "accuracy"]
            return gate.value

    assert accuracy() == pytest.approx(40 / 100)  # the hostile labels sink the candidate
    with session_scope(engine) as s:
        s.add(LabelQuarantine(device_id="evil", model="m"))
        s.add(LabelQuarantine(device_id="d0", model="other-model"))  # another model's: no effect
    assert accuracy() == pytest.approx(1.0)
    engine.dispose()


def test_quarantine_in_the_api_dashboard_and_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = "q-admin-" + "z" * 32
    settings = HubSettings(data_dir=tmp_path, admin_token=admin)
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        engine = client.app.state.hub.engine  # type: ignore[attr-defined]
        with session_scope(engine) as s:
            s.add_all([Device(id="evil", group="site-a"), Device(id="cam-1", group="site-a")])
            s.add(
                LabelQuarantine(
                    device_id="evil", model=MODEL, labels=120, disagreements=119,
                    rate=119 / 120, baseline=0.01, p_value=1e-60, reason="119 of 120 disagree",
                )
            )  # fmt: skip
        headers = {"Authorization": f"Bearer {admin}"}
        listed = client.get("/api/v1/devices/quarantine", headers=headers)
        assert listed.status_code == 200, listed.text
        assert [(q["device_id"], q["model"], q["active"]) for q in listed.json()] == [
            ("evil", MODEL, True)
        ]
        client.post("/ui/login", data={"token": admin, "next": "/ui/fleet"})
        page = client.get("/ui/fleet").text
        row = page.split('id="device-evil"', 1)[1].split("</tr>", 1)[0]
        assert "labels quarantined: digits-model" in row and "119 of 120 disagree" in row
        clean = page.split('id="device-cam-1"', 1)[1].split("</tr>", 1)[0]
        assert "quarantined" not in clean
        assert 'id="count-quarantined">1<' in page
        missing = client.post(
            "/api/v1/devices/cam-1/quarantine/lift", json={"reason": "x"}, headers=headers
        )
        assert missing.status_code == 409  # the device exists; it is just not quarantined
        assert (
            client.post("/api/v1/devices/evil/quarantine/lift", json={}, headers=headers)
        ).status_code == 422  # a reason is required
    dd = ["--data-dir", str(tmp_path)]
    assert main([*dd, "device", "quarantine", "--json"]) == 0
    assert [q["device_id"] for q in json.loads(capsys.readouterr().out)["quarantine"]] == ["evil"]
    code = main([*dd, "device", "unquarantine", "evil", "--reason", "relabelled", "--json"])
    assert code == 0
    [lifted] = json.loads(capsys.readouterr().out)["quarantine"]
    assert lifted["active"] is False and lifted["lifted_reason"] == "relabelled"
    assert main([*dd, "device", "quarantine", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quarantine"] == []
    assert main([*dd, "device", "quarantine", "--lifted", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["quarantine"]) == 1


# --- the retrained model ------------------------------------------------------------------


def clean_test_accuracy(engine: Engine, store: ArtifactStore, run_id: str) -> float:
    """The run's model on digits@1's validation and test records (base records only: the same
    for every hub; 551 of them)."""
    import torch

    from hub.registry.tracking import run_artifacts
    from hub.training.artifact import load_model
    from hub.training.loop import predict

    with session_scope(engine) as s:
        base = datasets.get_version(s, ref="digits@1")
        val, test = (datasets.load_split(s, store, version=base, split=n) for n in ("val", "test"))
        digest = run_artifacts(s, run_id=run_id)["model"].digest
    with store.open(digest) as f:
        trained = load_model(f.read())
    features = np.concatenate([val.features, test.features])
    assert val.labels is not None and test.labels is not None
    labels = np.concatenate([val.labels, test.labels])
    outputs = predict(trained.model, trained.preprocess.apply(features), device=torch.device("cpu"))
    return float((outputs.argmax(axis=1) == labels).mean())


FLEET = {f"cam-{i}": ("clean", 100) for i in range(6)}


def test_a_wrong_label_device_moves_the_retrained_model_by_at_most_half_a_point(
    tmp_path: Path,
) -> None:
    """Retraining on a drift incident, with and without a device that sends a wrong label for
    every prediction (300 of them, as many as half the honest fleet's): the same accuracy
    within 0.5 pp on the same clean test records, and the device is flagged. Measured without
    the quarantine (share cap only): -1.8 pp (seed 0) and -0.5 pp (seed 1); with it: 0.0."""
    accuracy: dict[str, float] = {}
    for name, devices in (("hostile", {**FLEET, "evil": ("wrong", 300)}), ("clean", FLEET)):
        engine = make_engine(f"sqlite:///{tmp_path / name}.db")
        create_all(engine)
        store = FileArtifactStore(root=tmp_path / name)
        with session_scope(engine) as s:
            datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
            triggers.set_policy(
                s, model_name=MODEL, spec="digits-mlp", dataset="digits",
                params={"epochs": 8, "hidden": 64}, on_new_data=False, on_new_code=False,
                min_field_records=40, min_incident_records=0, debounce_s=0,
            )  # fmt: skip
        send(engine, devices)
        drift_alert(engine)
        [event] = triggers.run_triggers(engine, store, now=T0)  # real training
        assert event.status == "finished" and event.run_id, event.detail
        accuracy[name] = clean_test_accuracy(engine, store, event.run_id)
        with session_scope(engine) as s:
            flagged = triggers.quarantined_devices(s, model=MODEL)
        assert flagged == ({"evil"} if name == "hostile" else set())
        engine.dispose()
    assert abs(accuracy["hostile"] - accuracy["clean"]) <= 0.005, accuracy
    assert accuracy["clean"] > 0.9, accuracy
