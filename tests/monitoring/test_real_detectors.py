"""The service with the detectors ``hub.monitoring.detectors`` ships (calibrated, seeded)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from hub.monitoring import DetectorCache, MonitorConfig, evaluate, open_alerts
from hub.tables import MonitorScore
from tests.monitoring.fleetdata import Fleet

DEVICES = {"cam-1": "north", "cam-2": "north", "cam-3": "south"}
CONFIG = MonitorConfig(window_size=200, false_alarm_rate=0.001)


def test_reference_then_shift_with_the_real_detectors(engine: Engine) -> None:
    fleet = Fleet(engine=engine).register()
    fleet.telemetry(devices=DEVICES, windows=8, per_window=50)
    cache = DetectorCache()
    quiet = evaluate(engine, config=CONFIG, cache=cache)
    assert quiet.windows == 2 * 3 + 4 + 2 + 6 and quiet.errors == 0
    assert quiet.opened == []
    with Session(engine) as s:
        used = {sc.detector for sc in s.exec(select(MonitorScore)).all()}
    assert {"feature_chi2", "prediction_chi2"} <= used
    fleet.telemetry(devices=DEVICES, windows=4, per_window=50, shift=1.5)
    drifted = evaluate(engine, config=CONFIG, cache=cache)
    fired = {(a.scope, a.detector) for a in drifted.opened}
    for scope in ("device:cam-1", "device:cam-3", "group:north", "group:south"):
        assert (scope, "feature_chi2") in fired
    assert ("version:sensor-clf@1", "feature_chi2") in fired
    again = evaluate(engine, config=CONFIG, cache=DetectorCache())  # a restarted hub
    assert again.opened == [] and again.windows == 0


def test_label_stream_detectors_flag_degradation(engine: Engine) -> None:
    fleet = Fleet(engine=engine).register()
    fleet.labels(device="cam-1", n=200, accuracy=0.95)
    cache = DetectorCache()
    assert evaluate(engine, config=CONFIG, cache=cache).opened == []
    fleet.labels(device="cam-1", n=300, accuracy=0.60)
    report = evaluate(engine, config=CONFIG, cache=cache)
    detectors = {a.detector for a in report.opened if a.scope == "version:sensor-clf@1"}
    assert {"wilson_accuracy", "accuracy_cusum"} <= detectors
    with Session(engine) as s:
        assert {a.kind for a in open_alerts(s, model="sensor-clf")} == {"degradation"}
