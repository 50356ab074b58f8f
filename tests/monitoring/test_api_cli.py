"""``/api/v1/monitor/*`` on both databases, ``edgeloop monitor ...`` on a data dir, and alerts
published on MQTT (real Mosquitto)."""

from __future__ import annotations

import json
import queue
import uuid
import warnings
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop_cli import main
from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.monitoring import MonitorConfig, MqttAlertPublisher, alerts_topic, evaluate
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import create_all
from tests.monitoring.fleetdata import Fleet
from tests.monitoring.tiny_detector import tiny_factory

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

DEVICES = {"cam-1": "north", "cam-2": "south"}


def seed(url: str) -> Fleet:
    engine = make_engine(url)
    create_all(engine)
    fleet = Fleet(engine=engine).register()
    fleet.telemetry(devices=DEVICES, windows=4, per_window=50, shift=1.5)
    fleet.labels(device="cam-1", n=100, accuracy=0.9)
    return fleet


def test_monitor_api(tmp_path: Path, database_url: str) -> None:
    # the default budget; windows by count alone (no check interval: the rows all arrive at
    # once, an aggregate window would wait for 10 s of arrivals)
    settings = HubSettings(
        data_dir=tmp_path, database_url=database_url, admin_token="t" * 40, monitor_interval_s=0
    )
    from hub.api import create_app

    fleet = seed(database_url)
    with TestClient(create_app(settings), headers={"Authorization": "Bearer " + "t" * 40}) as c:
        assert c.get("/api/v1/monitor/alerts").json() == []
        behind = c.get("/api/v1/monitor/status").json()["monitor"]
        assert behind["pending_rows"] == 8 and behind["lag_s"] > 0
        ran = c.post("/api/v1/monitor/evaluate")
        assert ran.status_code == 200, ran.text
        report = ran.json()
        assert report["versions"] == ["sensor-clf@1"] and report["rows"] == 8
        assert report["labels"] == 100 and report["errors"] == 0
        assert {a["kind"] for a in report["alerts_opened"]} == {"drift"}
        status = c.get("/api/v1/monitor/status").json()
        (version,) = status["versions"]
        assert (version["model"], version["version"]) == ("sensor-clf", "1")
        assert version["windows"] == 8 and version["predictions"] == 400
        assert version["devices"] == 2
        assert version["live_accuracy"]["n"] == 100
        assert version["live_accuracy"]["accuracy"] == pytest.approx(0.9)
        assert version["evaluated_accuracy"] == pytest.approx(0.95)
        assert version["open_alerts"] and status["open_alerts"] == len(version["open_alerts"])
        caught_up = status["monitor"]
        assert caught_up["pending_rows"] == 0 and caught_up["lag_s"] == 0
        assert caught_up["last_cycle_s"] == pytest.approx(report["seconds"], abs=0.01)
        score = version["scores"][0]
        assert {"detector", "score", "threshold", "p_value", "fired", "at"} <= set(score)
        assert score["scope"] == "version:sensor-clf@1"
        listed = c.get("/api/v1/monitor/alerts", params={"kind": "drift", "open_only": True})
        assert {a["scope"] for a in listed.json()} >= {"device:cam-1", "version:sensor-clf@1"}
        assert c.get("/api/v1/monitor/alerts", params={"kind": "degradation"}).json() == []
        assert c.get("/api/v1/monitor/alerts", params={"model": "other"}).json() == []
        bad = c.get("/api/v1/monitor/alerts", params={"kind": "weird"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
        assert c.post("/api/v1/monitor/evaluate").json()["alerts_opened"] == []
        assert TestClient(create_app(settings)).get("/api/v1/monitor/status").status_code == 401
    fleet.engine.dispose()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(list(args))
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_monitor_cli_json_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dd = ("--data-dir", str(tmp_path))
    seed(f"sqlite:///{tmp_path / 'hub.db'}")
    code, empty = cli(capsys, *dd, "monitor", "alerts", "--json")
    assert code == 0 and empty == {"alerts": []}
    code, report = cli(capsys, *dd, "monitor", "evaluate", "--json")
    assert code == 0 and report["rows"] == 8 and report["alerts_opened"]
    code, listed = cli(capsys, *dd, "monitor", "alerts", "--open", "--json")
    assert code == 0 and listed["alerts"]
    for alert in listed["alerts"]:
        assert {"kind", "scope", "score", "threshold", "at"} <= set(alert)
        assert alert["kind"] == "drift" and alert["score"] > alert["threshold"]
    code, status = cli(capsys, *dd, "monitor", "status", "--json")
    assert code == 0 and status["versions"][0]["predictions"] == 400
    code, error = cli(capsys, *dd, "monitor", "alerts", "--kind", "nope", "--json")
    assert code != 0 and error["code"] == "invalid_request"  # the schema's enum refuses it


def test_alerts_are_published_on_mqtt(tmp_path: Path, mosquitto: EmbeddedBroker) -> None:
    fleet_name = f"mon-{uuid.uuid4().hex[:8]}"
    topic = alerts_topic(prefix="edgeloop/v1", fleet=fleet_name)
    assert topic == f"edgeloop/v1/{fleet_name}/hub/alerts"
    received: queue.Queue[bytes] = queue.Queue()
    subscribed = queue.Queue[int]()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{fleet_name}")
    sub.on_message = lambda _c, _u, msg: received.put(bytes(msg.payload))
    sub.on_subscribe = lambda *_a: subscribed.put(1)
    sub.on_connect = lambda client, *_a: client.subscribe(topic, qos=1)
    sub.connect("127.0.0.1", int(mosquitto.url.rsplit(":", 1)[1]))
    sub.loop_start()
    publisher = MqttAlertPublisher(url=mosquitto.url, topic=topic, client_id=f"pub-{fleet_name}")
    try:
        subscribed.get(timeout=10)
        assert publisher.wait_connected(10)
        url = f"sqlite:///{tmp_path / 'hub.db'}"
        seed(url)
        from hub.monitoring import DetectorCache

        report = evaluate(
            make_engine(url),
            config=MonitorConfig(false_alarm_rate=0.001),
            publisher=publisher,
            cache=DetectorCache(factory=tiny_factory),
        )
        assert report.opened
        messages = [json.loads(received.get(timeout=10)) for _ in report.opened]
        assert {m["event"] for m in messages} == {"opened"}
        assert {m["id"] for m in messages} == {a.id for a in report.opened}
        assert {"kind", "scope", "score", "threshold", "at", "detector"} <= set(messages[0])
    finally:
        publisher.close()
        sub.loop_stop()
        sub.disconnect()


def test_status_counts_come_from_the_monitor_and_survive_an_older_database(
    tmp_path: Path, database_url: str
) -> None:
    """The status's windows, predictions and devices are kept by the monitor as it reads
    (no scan of the telemetry per request), equal the rows' own counts across batches, and
    a database whose cursors predate the totals is counted once from its rows."""
    from sqlmodel import Session, delete, select

    from hub.monitoring import DetectorCache
    from hub.monitoring.status import monitor_status
    from hub.tables import MonitorCursor, MonitorDevice

    fleet = seed(database_url)
    engine = fleet.engine
    config = MonitorConfig(batch_rows=3)  # several transactions: totals add up across them
    evaluate(engine, config=config, cache=DetectorCache())
    with Session(engine) as s:
        (version,) = monitor_status(s)["versions"]
    assert (version["windows"], version["predictions"], version["devices"]) == (8, 400, 2)
    # an older database: the cursor has no totals, no device rows; later rows come in
    with Session(engine) as s:
        for c in s.exec(select(MonitorCursor).where(MonitorCursor.scope == "*")).all():
            c.pending = {}
            s.add(c)
        s.exec(delete(MonitorDevice))  # type: ignore[call-overload]
        s.commit()
    fleet.telemetry(devices={"cam-3": "north"}, windows=2, per_window=50, shift=0.0)
    evaluate(engine, config=config, cache=DetectorCache())  # a new process
    with Session(engine) as s:
        (version,) = monitor_status(s)["versions"]
    assert (version["windows"], version["predictions"], version["devices"]) == (10, 500, 3)
