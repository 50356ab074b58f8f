"""A newcomer's device, end to end, against a real ``edgeloop hub serve`` process.

The hub is started as the README says (``--mqtt-port`` included) and prints how to sign in:
a one-time dashboard link that works once, and where the admin token is, never the token. A
device with no login is told, once, how to enrol (the broker's "not authorized" is not a
network fault); ``agent run --enroll-token`` enrols and runs in one step, and on restart uses
the stored login instead of the spent token; a refused token says what to do.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.core.settings import HubSettings
from hub.security.keys import bundle_public_key
from hub.serve import sign_in_lines
from tests.fixtures.brokers import require_mosquitto
from tests.fixtures.hub_procs import Procs, until, until_up
from tests.fixtures.ports import free_port


@dataclass
class Hub:
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path
    url: str
    grpc: str
    mqtt_port: int
    admin_token: str
    procs: Procs

    def api(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=10)

    def logs(self) -> str:
        return self.procs.logs()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require_mosquitto()
    root = tmp_path_factory.mktemp("device-join")
    procs = Procs(root)
    api, grpc_port, mqtt_port = free_port(), free_port(), free_port()
    env = {
        "EDGELOOP_DATA_DIR": str(root / "data"),
        "EDGELOOP_EMBEDDED_BROKER": "mosquitto",
        "EDGELOOP_TRIGGER_INTERVAL_S": "0",
        "EDGELOOP_MONITOR_INTERVAL_S": "0",
    }
    args = ["hub", "serve", "--port", str(api), "--grpc-port", str(grpc_port)]
    proc = procs.start("hub", [*args, "--mqtt-port", str(mqtt_port)], env)
    url = f"http://127.0.0.1:{api}"

    def healthy() -> dict[str, Any] | None:
        if proc.poll() is not None:
            pytest.fail(f"hub exited with {proc.returncode}\n{procs.logs()}")
        try:
            answer = httpx.get(f"{url}/healthz", timeout=1)
        except httpx.TransportError:
            return None
        return answer.json() if answer.status_code == 200 else None

    try:
        health = until_up("hub /healthz", proc, healthy, procs.logs)
        assert health["mqtt"]["url"] == f"mqtt://127.0.0.1:{mqtt_port}", health  # --mqtt-port
        yield Hub(
            proc=proc,
            data=root / "data",
            log=root / "hub.log",
            url=url,
            grpc=f"127.0.0.1:{grpc_port}",
            mqtt_port=mqtt_port,
            admin_token=(root / "data" / "admin_token").read_text().strip(),
            procs=procs,
        )
    finally:
        procs.stop_all()


def test_serve_prints_a_one_time_sign_in_link_and_where_the_token_is(hub: Hub) -> None:
    printed = hub.log.read_text()
    link = re.search(r"dashboard: (http://\S+/ui/login\?code=[\w-]+)", printed)
    assert link is not None, printed
    assert f"admin token: in {hub.data / 'admin_token'}" in printed, printed
    assert "device token create" in printed and f"--grpc {hub.grpc}" in printed, printed
    with httpx.Client(timeout=10) as browser:
        signed_in = browser.get(link.group(1))
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/fleet"
        assert "httponly" in signed_in.headers["set-cookie"].lower()
        assert browser.get(f"{hub.url}/ui/fleet").status_code == 200  # the cookie works
    with httpx.Client(timeout=10) as stranger:  # the link works once
        again = stranger.get(link.group(1))
        assert again.status_code == 401 and "used already or has expired" in again.text
        assert str(hub.data / "admin_token") in again.text
        assert stranger.get(f"{hub.url}/ui/fleet").status_code in {303, 401}
    assert hub.admin_token not in hub.log.read_text()


def test_production_banner_names_the_variable_not_the_token(tmp_path: Path) -> None:
    token = "p" * 40
    settings = HubSettings(
        mode="production",
        admin_token=token,
        database_url="postgresql://edgeloop@db.invalid/edgeloop",
        data_dir=tmp_path,
    )
    lines = sign_in_lines(settings, app=None, grpc="10.0.0.2:50051")
    assert not any("code=" in line for line in lines)  # no sign-in link in logs of production
    assert any("the one in EDGELOOP_ADMIN_TOKEN" in line for line in lines), lines
    assert token not in "\n".join(lines)


def _public_key(hub: Hub, folder: Path) -> Path:
    path = folder / "hub.pub"
    path.write_text(bundle_public_key(HubSettings(data_dir=hub.data)).hex() + "\n")
    return path


def test_an_agent_without_login_says_once_how_to_enrol(hub: Hub, tmp_path: Path) -> None:
    http_port = free_port()
    agent = hub.procs.start(
        "agent-stranger",
        ["agent", "run", "--device-id", "stranger-1", "--agent-dir", str(tmp_path / "agent"),
         "--public-key", str(_public_key(hub, tmp_path)),
         "--mqtt-url", f"mqtt://127.0.0.1:{hub.mqtt_port}", "--http-port", str(http_port)],
        {},
    )  # fmt: skip
    log = hub.procs.folder / "agent-stranger.log"

    def refused() -> dict[str, Any] | None:
        if agent.poll() is not None:
            pytest.fail(f"agent exited with {agent.returncode}\n{hub.logs()}")
        if "device token create" not in log.read_text():
            return None
        health = httpx.get(f"http://127.0.0.1:{http_port}/v1/health", timeout=5).json()
        return health if health["mqtt"]["login_refused"] >= 2 else None

    health = until("the refused login explained", refused, hub.logs)
    assert health["mqtt"]["connected"] is False and "135" in health["mqtt"]["last_error"]
    printed = log.read_text()
    assert printed.splitlines()[0].startswith(f"agent stranger-1: state folder {tmp_path}")
    # the hint names the real commands, with this device's id and folder
    assert f"--device-id stranger-1 --agent-dir {tmp_path / 'agent'} --enroll-token" in printed
    assert printed.count("device token create") == 1, printed  # once, not at every retry
    # a capped backoff, not a tight loop: the first retries wait ~1 s, then longer
    assert health["mqtt"]["login_refused"] <= 4, health


def test_agent_run_enroll_token_joins_in_one_step(hub: Hub, tmp_path: Path) -> None:
    api = hub.api()
    made = api.post("/enrollment-tokens", json={"group": "first-hour", "max_uses": 1})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    agent_dir = tmp_path / "agent"
    args = ["agent", "run", "--device-id", "cam-1", "--agent-dir", str(agent_dir),
            "--enroll-token", token, "--grpc", hub.grpc]  # fmt: skip

    def online() -> dict[str, Any] | None:
        found = api.get("/devices/cam-1")
        return found.json() if found.status_code == 200 and found.json()["online"] else None

    first = hub.procs.start("agent-cam-1", args, {})
    joined = until("the device enrolled and online", online, hub.logs)
    assert joined["group"] == "first-hour"
    assert (agent_dir / "cam-1" / "enrollment.json").stat().st_mode & 0o077 == 0
    first.terminate()
    assert first.wait(timeout=20) == 0, hub.logs()

    def offline() -> bool:  # a clean stop says so on the retained state before it exits
        return api.get("/devices/cam-1").json()["online"] is False

    until("the device offline after SIGTERM", offline, hub.logs)

    # a restart with the same (now spent) token uses the stored login
    http_port = free_port()
    again = hub.procs.start("agent-cam-1-again", [*args, "--http-port", str(http_port)], {})

    def connected() -> dict[str, Any] | None:
        if again.poll() is not None:
            pytest.fail(f"agent exited with {again.returncode}\n{hub.logs()}")
        try:
            health = httpx.get(f"http://127.0.0.1:{http_port}/v1/health", timeout=5).json()
        except httpx.TransportError:
            return None
        return health if health["mqtt"]["connected"] else None

    health = until("the restarted agent connected", connected, hub.logs)
    assert health["mqtt"]["login_refused"] == 0, health
    restarted = (hub.procs.folder / "agent-cam-1-again.log").read_text()
    assert "already enrolled" in restarted and "--enroll-token not used" in restarted
    for name in ("agent-cam-1.log", "agent-cam-1-again.log"):
        assert token not in (hub.procs.folder / name).read_text()

    # revoked: the broker cuts it off and refuses the stored login; the hint says to enrol
    # again with `agent enroll` (which replaces the login; --enroll-token would skip it)
    assert api.post("/devices/cam-1/revoke").status_code == 200

    def told() -> str | None:
        printed = (hub.procs.folder / "agent-cam-1-again.log").read_text()
        return printed if "replaces the stored login" in printed else None

    hint = " ".join(until("the revoked login explained", told, hub.logs).split())
    assert f"edgeloop agent enroll --device-id cam-1 --agent-dir {agent_dir}" in hint, hint


def test_a_refused_enroll_token_says_what_to_do(hub: Hub, tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "edgeloop_cli", "agent", "run", "--device-id", "cam-9",
         "--agent-dir", str(tmp_path), "--grpc", hub.grpc],
        env={**os.environ, "EDGELOOP_AGENT_ENROLL_TOKEN": "elt_not-a-token"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    said = " ".join((refused.stdout + refused.stderr).split())  # unwrapped
    assert refused.returncode == 1, said
    assert "unknown enrollment token" in said and "device token create" in said, said
    assert not (tmp_path / "cam-9" / "enrollment.json").exists()


def test_mqtt_port_with_an_external_broker_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgeloop_cli import main

    args = ["hub", "serve", "--mqtt-port", "1999", "--mqtt-url", "mqtt://broker.invalid:1883"]
    assert main(args) == 2
    assert "--mqtt-port" in capsys.readouterr().err
