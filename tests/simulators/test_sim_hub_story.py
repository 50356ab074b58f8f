"""``edgeloop --hub URL sim run`` reports what the hub did during the run: a real ``hub
serve`` rolls its own signed bundle out to the simulated fleet in phases while the run goes
on, and the report carries that rollout's timeline beside the fleet's own events."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeloop_cli import main
from hub.core.settings import HubSettings
from hub.mqtt.broker import EmbeddedBroker
from hub.security.keys import bundle_public_key
from tests.fixtures.brokers import require_mosquitto
from tests.test_hub_serve import _serve, _stop

DEVICES = 4


def _roll_out_when_online(url: str, token: str, made: dict[str, Any]) -> None:
    """Once every simulated device is online at the hub, start a ``1,100%`` rollout."""
    http = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 60  # an upper bound, not a measurement
    with http:
        while time.monotonic() < deadline:
            online = [d for d in http.get("/devices").json() if d["online"]]
            if len(online) == DEVICES:
                answer = http.post(
                    "/rollouts",
                    json={
                        "model": "digits-mlp",
                        "version": "1",
                        "selector": "all",
                        "phases": "1,100%",
                        "bake_s": 1,
                        "probation_s": 0,
                        "gates": {},
                    },
                )
                made["status"], made["body"] = answer.status_code, answer.json()
                return
            time.sleep(0.2)
    made["status"] = "devices never online"


def test_sim_run_reports_the_hubs_rollout_timeline(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mosquitto_fresh: EmbeddedBroker,
    prepared_hub: Path,  # tmp_path/data: digits-mlp@1 packaged and signed by this hub's key
) -> None:
    require_mosquitto()
    key_file = tmp_path / "hub.pub"
    key_file.write_bytes(bundle_public_key(HubSettings(data_dir=tmp_path / "data")).hex().encode())
    proc, url, _log = _serve(
        tmp_path,
        EDGELOOP_MQTT_URL=mosquitto_fresh.url,
        EDGELOOP_FLEET="simstory",
        EDGELOOP_ROLLOUT_TICK_S="0.2",
        EDGELOOP_TRIGGER_INTERVAL_S="0",
    )
    try:
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        scenario = tmp_path / "s.toml"
        scenario.write_text(
            f'[fleet]\ndevices = {DEVICES}\nname = "simstory"\ntelemetry_window_s = 0.5\n'
            "telemetry_tick_s = 0.1\n[data]\nrate_hz = 5\n"
        )
        made: dict[str, Any] = {}
        roller = threading.Thread(target=_roll_out_when_online, args=(url, token, made))
        roller.start()
        code = main(
            [
                "--hub", url, "--token", token, "sim", "run", "--scenario", str(scenario),
                "--duration", "8", "--mqtt-url", mosquitto_fresh.url,
                "--public-key", str(key_file), "--json",
            ]
        )  # fmt: skip
        roller.join(60)
        out = capsys.readouterr().out
        assert code == 0, out
        assert made.get("status") == 201, made
        report = json.loads(out)
    finally:
        _stop(proc)

    hub = report["hub"]
    assert [r["id"] for r in hub["rollouts"]] == [made["body"]["id"]]
    rollout = hub["rollouts"][0]
    assert rollout["state"] == "completed", rollout
    assert rollout["device_states"] == {"healthy": DEVICES}
    kinds = [e["kind"] for e in rollout["timeline"]]
    for step in ("created", "phase_started", "phase_passed", "completed"):
        assert step in kinds, kinds
    times = [e["after_s"] for e in rollout["timeline"]]
    assert times == sorted(times) and 0 < times[0] < report["duration_s"], times
    assert 0 < rollout["after_s"] <= rollout["finished_after_s"] < report["duration_s"] + 5
    # the fleet saw the same deploys: every device reported healthy on its own
    # (a device whose hub ack was late sends its event again: the fleet counts what it sent,
    # the hub stores each once, so at least one per device)
    assert report["deployment_events"].get("healthy", 0) >= DEVICES, report["deployment_events"]
    assert report["serving_at_end"] == DEVICES
    # nothing drifted and no retraining policy exists: empty, with their shape
    assert hub["detections"] == [] and hub["first_detection_after_s"] == {}
    assert hub["retraining"] == []
