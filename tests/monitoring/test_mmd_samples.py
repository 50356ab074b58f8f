"""The MMD detector in the monitoring service: reference rows from the bundle's
``samples.npz`` (read from the artifact store), window rows from ``FieldSample`` (as the
ingest writes them from telemetry reservoirs). Real detectors, SQLite and PostgreSQL."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from hub.core.artifacts import FileArtifactStore
from hub.core.db import session_scope
from hub.monitoring import DetectorCache, MonitorConfig, evaluate
from hub.monitoring._reference import reference_samples
from hub.tables import FieldSample, MonitorScore
from model_packager.bundle import write_bundle
from model_packager.signing import generate_private_key
from tests.monitoring.fleetdata import FEATURES, Fleet

DEVICES = {"cam-1": "north", "cam-2": "south"}
CONFIG = MonitorConfig(window_size=200, false_alarm_rate=0.01)
RESERVOIR = 25  # raw samples kept per telemetry window


def _bundle(store: FileArtifactStore, tmp: Path) -> str:
    """A signed bundle whose samples.npz carries reference rows, as
    hub.packaging.service writes it."""
    buffer = io.BytesIO()
    reference = np.random.default_rng(2).normal(size=(300, FEATURES)).astype(np.float32)
    np.savez(buffer, self_test=reference[:4], reference=reference)
    path = tmp / "bundle.zip"
    write_bundle(
        path,
        manifest={"name": "sensor-clf", "version": "1"},
        files={"samples.npz": buffer.getvalue()},
        signing_key=generate_private_key(),
    )
    return store.put_file(path).digest


def _telemetry(fleet: Fleet, *, windows: int, shift: float = 0.0) -> None:
    """Telemetry rows and, like the ingest, each window's reservoir as FieldSample rows."""
    with session_scope(fleet.engine) as s:
        for _ in range(windows):
            for device, group in DEVICES.items():
                x = fleet.sample(50, shift=shift)
                row = fleet.window_row(device, x, group=group)
                s.add(row)
                for i, values in enumerate(x[:RESERVOIR]):
                    s.add(
                        FieldSample(
                            device_id=device,
                            prediction_id=f"{device}-{row.seq}-{i}",
                            values=[float(v) for v in values],
                            shape=[FEATURES],
                            model=fleet.model,
                            version=fleet.version,
                            at=row.window_start + timedelta(seconds=i / RESERVOIR),
                        )
                    )


def _scores(engine: Engine, detector: str) -> list[MonitorScore]:
    with Session(engine) as s:
        return list(s.exec(select(MonitorScore).where(MonitorScore.detector == detector)).all())


def test_mmd_scores_windows_from_field_samples_and_fires_on_a_shift(
    engine: Engine, tmp_path: Path
) -> None:
    store = FileArtifactStore(root=tmp_path / "artifacts")
    fleet = Fleet(engine=engine, digest=_bundle(store, tmp_path)).register()
    rows = reference_samples(store, fleet.digest)
    assert rows is not None and rows.shape == (300, FEATURES)

    _telemetry(fleet, windows=8)
    cache = DetectorCache(store=store)
    quiet = evaluate(engine, config=CONFIG, cache=cache)
    assert quiet.errors == 0 and quiet.skipped == {}
    calm = _scores(engine, "mmd")
    # every window of every scope (2 devices, 2 groups, the version) got an MMD score
    assert {s.scope for s in calm} == {
        "device:cam-1",
        "device:cam-2",
        "group:north",
        "group:south",
        "version:sensor-clf@1",
    }
    assert not any(s.fired for s in calm)
    assert all(s.p_value is not None and s.threshold > 0 for s in calm)

    _telemetry(fleet, windows=4, shift=1.0)
    drifted = evaluate(engine, config=CONFIG, cache=cache)
    fired = {a.scope for a in drifted.opened if a.detector == "mmd"}
    assert {"version:sensor-clf@1", "device:cam-1", "device:cam-2"} <= fired
    new = [s for s in _scores(engine, "mmd") if s.id not in {c.id for c in calm}]
    assert new and min(s.score for s in new) > max(s.score for s in calm)


def test_references_carry_the_bundles_rows_only_with_the_store(
    engine: Engine, tmp_path: Path
) -> None:
    store = FileArtifactStore(root=tmp_path / "artifacts")
    fleet = Fleet(engine=engine, digest=_bundle(store, tmp_path)).register()
    key = {"model": fleet.model, "version": fleet.version, "bundle_digest": fleet.digest}
    with Session(engine) as s:
        bare = DetectorCache().reference(s, **key)
        full = DetectorCache(store=store).reference(s, **key)
    assert bare is not None and bare.samples is None  # no store: MMD cannot be built
    assert full is not None and full.samples.shape == (300, FEATURES)
    assert reference_samples(store, "sha256:" + "00" * 32) is None  # not in the store
