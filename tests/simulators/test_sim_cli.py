"""``edgeloop sim run``: a fleet through faults, churn and a bad bundle, reported as JSON."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from edgeloop_cli import main
from tests.fixtures.brokers import require_mosquitto
from tests.simulators.conftest import SimHub

SCENARIO = """
name = "cli-chaos"
seed = 5
[fleet]
devices = 12
name = "{fleet}"
stagger_s = 0.0
telemetry_window_s = 0.5
telemetry_tick_s = 0.1
[[groups]]
name = "field"
fraction = 0.5
network = "flaky"
[data]
rate_hz = 10
[feedback]
coverage = 0.3
delay_s = 0.1
[[faults]]
kind = "partition"
at_s = 1.5
duration_s = 1.5
group = "field"
[[faults]]
kind = "broker_restart"
at_s = 4
duration_s = 1
[churn]
interval_s = 2.5
fraction = 0.1
down_s = 0.2
leave_fraction = 0.1
leave_at_s = 3
join = 2
join_at_s = 2
[bad_bundles]
fraction = 0.25
kind = "tampered"
"""


def test_sim_run_reports_no_loss_through_faults(
    sim_hub: SimHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_mosquitto()
    scenario = tmp_path / "chaos.toml"
    scenario.write_text(SCENARIO.format(fleet=f"c{uuid.uuid4().hex[:8]}"))
    code = main(
        [
            "sim", "run", "--scenario", str(scenario), "--duration", "8",
            "--bundle", str(sim_hub.bundle_path), "--public-key", str(sim_hub.public_key_file),
            "--root", str(tmp_path / "run"), "--json",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out)
    assert report["devices"] == 14  # 12 + 2 joiners
    assert report["messages_sent"] > 14 * 3
    assert report["messages_lost"] == 0, report
    assert report["messages_pending"] == 0 and report["drained"]
    assert report["messages_duplicated"] >= 0
    kinds = [e["kind"] for e in report["events"]]
    for kind in ("partition", "heal", "broker_down", "broker_up", "churn", "leave", "join"):
        assert kind in kinds, kinds
    # the tampered bundle failed on its devices; the others became healthy
    assert report["deployment_events"].get("failed", 0) == 3, report["deployment_events"]
    assert report["deployment_events"]["healthy"] >= 14 - 3 - 1
    assert report["predictions"] > 0 and report["labels"] > 0


def test_sim_run_refuses_a_bad_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text('[[drift]]\nkind = "sideways"\n')
    assert main(["sim", "run", "--scenario", str(scenario), "--json"]) == 1
    error = json.loads(capsys.readouterr().out)
    assert error["code"] == "invalid_input" and "sideways" in error["error"]
