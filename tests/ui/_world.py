"""A small real hub for the dashboard tests: data, a trained and packaged model, devices,
a rollout the controller has started, monitoring scores, alerts and label feedback.

The model is trained (digits-mlp, one epoch) and packaged (ONNX fp32 + int8) by the hub's
own services. Device presence and monitoring rows are written in the shapes the ingest and
the monitor write them (``Device.state`` is ``MessageToDict(AgentState)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

MODEL = "digits-mlp"
FIELD_DEVICES = [f"cam-{i}" for i in range(4)]
LAB_DEVICES = ["lab-0", "lab-1"]


@dataclass(frozen=True, kw_only=True)
class World:
    database_url: str
    data_dir: Path
    model: str
    version: int
    bundle_digest: str


def device_state(device_id: str, *, online: bool, version: str | None) -> dict[str, object]:
    state: dict[str, object] = {
        "deviceId": device_id,
        "online": online,
        "agentVersion": "0.1.0",
        "runtime": "onnxruntime",
    }
    if version is not None:
        state["active"] = {"model": MODEL, "version": version, "status": "SLOT_STATUS_ACTIVE"}
    return state


def _devices(engine: Engine) -> None:
    from hub.core.db import session_scope
    from hub.tables import Device

    now = datetime.now(UTC)
    with session_scope(engine) as s:
        for i, device_id in enumerate(FIELD_DEVICES + LAB_DEVICES):
            lab = device_id in LAB_DEVICES
            online = i != 3  # cam-3 is offline
            s.add(
                Device(
                    id=device_id,
                    group="lab" if lab else "field",
                    tags={"site": "b" if lab else ("a" if i < 2 else "c")},
                    online=online,
                    state=device_state(device_id, online=online, version=None if lab else "1"),
                    last_seen_at=now,
                )
            )


def _monitoring(engine: Engine, *, version: str) -> None:
    """A drift score series that crosses its threshold (one alert) and label feedback."""
    from hub.core.db import session_scope
    from hub.tables import Alert, FeedbackLabelRow, MonitorScore

    start = datetime.now(UTC) - timedelta(minutes=30)
    scope = f"version:{MODEL}@{version}"
    with session_scope(engine) as s:
        for i in range(12):
            at = start + timedelta(minutes=2 * i)
            for sc, score in ((scope, 0.5 + 0.2 * i), ("group:field", 0.4 + 0.15 * i)):
                s.add(
                    MonitorScore(
                        kind="drift",
                        scope=sc,
                        model=MODEL,
                        version=version,
                        detector="feature_chi2",
                        score=score,
                        threshold=2.0,
                        fired=score > 2.0,
                        n=200,
                        at=at,
                    )
                )
            s.add(
                MonitorScore(
                    kind="degradation",
                    scope=scope,
                    model=MODEL,
                    version=version,
                    detector="accuracy",
                    score=0.02 * i,
                    threshold=0.05,
                    fired=0.02 * i > 0.05,
                    n=50,
                    at=at,
                )
            )
        s.add(
            Alert(
                kind="drift",
                scope=scope,
                model=MODEL,
                version=version,
                detector="feature_chi2",
                score=2.1,
                threshold=2.0,
                p_value=0.001,
                at=start + timedelta(minutes=16),
            )
        )
        for i in range(40):
            s.add(
                FeedbackLabelRow(
                    device_id=FIELD_DEVICES[i % 3],
                    seq=i + 1,
                    prediction_id=f"p{i}",
                    label=i % 10,
                    predicted_label=i % 10 if i % 8 else (i + 1) % 10,  # 35 of 40 right
                    model=MODEL,
                    version=version,
                    at=start + timedelta(seconds=30 * i),
                )
            )


def build_world(root: Path, *, database_url: str | None = None) -> World:
    """Import digits, train and package digits-mlp@1, register devices, add monitoring rows."""
    from hub.core.artifacts import FileArtifactStore
    from hub.core.db import make_engine, session_scope
    from hub.datasets import service as datasets
    from hub.packaging.service import PackageOptions, package
    from hub.tables import create_all
    from hub.training.service import train
    from model_packager.signing import generate_private_key

    root.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{root / 'hub.db'}"
    engine = make_engine(url)
    try:
        create_all(engine)
        store = FileArtifactStore(root=root / "artifacts")
        with session_scope(engine) as s:
            datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
        outcome = train(engine, store, spec_name=MODEL, dataset="digits@1", params={"epochs": 1})
        assert outcome.model_version is not None
        version = outcome.model_version.version
        packaged = package(
            engine,
            store,
            ref=f"{MODEL}@{version}",
            signing_key=generate_private_key(),
            options=PackageOptions(formats=("onnx",), formats_explicit=True),
        )
        _devices(engine)
        _monitoring(engine, version=str(version))
    finally:
        engine.dispose()
    return World(
        database_url=url,
        data_dir=root,
        model=MODEL,
        version=version,
        bundle_digest=packaged.bundle.digest,
    )
