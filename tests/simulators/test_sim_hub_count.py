"""``edgeloop --hub URL sim run``: loss counted at the hub's ingest, not only at the broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloop_cli import main
from hub.mqtt.broker import EmbeddedBroker
from tests.fixtures.brokers import require_mosquitto
from tests.simulators.conftest import SimHub
from tests.test_hub_serve import _serve, _stop


def test_sim_run_with_a_hub_counts_what_the_hub_stored(
    sim_hub: SimHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mosquitto_fresh: EmbeddedBroker,
) -> None:
    require_mosquitto()
    mosquitto_url = mosquitto_fresh.url
    # the hub ingests from the same (anonymous) broker the simulated devices publish to
    proc, url, _log = _serve(tmp_path, EDGELOOP_MQTT_URL=mosquitto_url, EDGELOOP_FLEET="simhub")
    try:
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        scenario = tmp_path / "s.toml"
        scenario.write_text(
            '[fleet]\ndevices = 4\nname = "simhub"\ntelemetry_window_s = 0.5\n'
            "telemetry_tick_s = 0.1\n[data]\nrate_hz = 10\n[feedback]\ncoverage = 0.5\n"
            "delay_s = 0.1\n"
        )
        code = main(
            [
                "--hub", url, "--token", token, "sim", "run", "--scenario", str(scenario),
                "--duration", "5", "--mqtt-url", mosquitto_url, "--json",
                "--bundle", str(sim_hub.bundle_path), "--public-key", str(sim_hub.public_key_file),
            ]
        )  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0, out
        report = json.loads(out)
        hub = report["hub"]
        assert hub["messages_sent"] > 4 * 4  # telemetry + feedback the devices produced
        assert hub["messages_lost"] == 0, hub
        assert hub["messages_stored"] == hub["messages_sent"] - report["messages_pending"]
        assert set(hub["by_stream"]) == {"telemetry", "feedback"}
        assert hub["by_stream"]["feedback"]["sent"] > 0
        assert isinstance(hub["duplicates_discarded"], int)
    finally:
        _stop(proc)
