"""``edgeloop hub serve`` as a real process: zero configuration, and PostgreSQL by one URL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.ports import free_port
from tests.fixtures.services import missing_service

_free_port = free_port  # outside the ephemeral range (tests/fixtures/ports.py)


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    api, grpc_port, mqtt = _free_port(), _free_port(), _free_port()
    log = tmp_path / "hub.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeloop_cli",
            "hub",
            "serve",
            "--port",
            str(api),
            "--grpc-port",
            str(grpc_port),
        ],
        env={
            **os.environ,
            "EDGELOOP_DATA_DIR": str(tmp_path / "data"),
            "EDGELOOP_EMBEDDED_MQTT_PORT": str(mqtt),
            **env,
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{api}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"hub exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"hub did not answer /healthz in 60 s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_zero_config_serve_starts_broker_grpc_and_docs(tmp_path: Path) -> None:
    import shutil

    if shutil.which("mosquitto") is None:
        missing_service("the mosquitto binary")
    proc, url, log = _serve(tmp_path)
    try:
        health = httpx.get(f"{url}/healthz").json()
        assert health["database"] == "sqlite"
        assert health["mqtt"]["broker"] == "embedded-mosquitto"
        # every background service hub serve started reports itself, running
        services = health["services"]
        assert {"broker", "grpc", "ingest", "key-rotation", "monitor"} <= set(services)
        assert all(service["running"] for service in services.values()), services
        assert (tmp_path / "data" / "hub.db").exists()
        assert httpx.get(f"{url}/docs").status_code == 200
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        assert oct((tmp_path / "data" / "admin_token").stat().st_mode & 0o777) == "0o600"
        assert httpx.get(f"{url}/api/v1/models").status_code == 401
        authed = httpx.get(f"{url}/api/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert authed.status_code == 200 and authed.json() == []
        host, port = health["grpc"].split(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        mqtt_port = int(health["mqtt"]["url"].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", mqtt_port), timeout=5):
            pass
        health_text = httpx.get(f"{url}/healthz").text
    finally:
        assert _stop(proc) == 0, log.read_text()
    # The hub's own broker password (its clients' login) is shown nowhere.
    hub_password = (tmp_path / "data" / "keys" / "mqtt_hub_password").read_text().strip()
    assert len(hub_password) >= 16
    assert hub_password not in health_text and hub_password not in log.read_text()
    # The embedded broker went down with the hub.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mqtt_port), timeout=2).close()


def test_same_hub_on_postgresql_by_one_url(tmp_path: Path, postgres_url: str) -> None:
    proc, url, _log = _serve(
        tmp_path,
        EDGELOOP_DATABASE_URL=postgres_url,
        EDGELOOP_EMBEDDED_BROKER="amqtt",
        EDGELOOP_ADMIN_TOKEN="a" * 40,
    )
    try:
        assert httpx.get(f"{url}/healthz").json()["database"] == "postgresql"
        made = httpx.post(
            f"{url}/api/v1/devices",
            json={"id": "pg-device"},
            headers={"Authorization": "Bearer " + "a" * 40},
        )
        assert made.status_code == 201, made.text
        assert httpx.get(f"{url}/healthz").json()["mqtt"]["broker"] == "embedded-amqtt"
    finally:
        _stop(proc)
