"""The hub the demo drives: ``edgeloop hub serve`` as a child process, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgeloop_cli.errors import CliError

# The demo wants the loop to turn in seconds, not minutes: evaluate often, calibrate for
# fewer false alarms (dozens of scopes are watched), tick the rollout controller fast.
FAST = {
    "EDGELOOP_MONITOR_INTERVAL_S": "2",
    "EDGELOOP_MONITOR_WINDOW_SIZE": "100",
    "EDGELOOP_MONITOR_MIN_LABELS": "40",
    "EDGELOOP_TRIGGER_INTERVAL_S": "2",
    "EDGELOOP_ROLLOUT_TICK_S": "0.5",
}


class DemoError(CliError):
    """The demo cannot go on; the message says why and where to look."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="demo_failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HubProcess:
    """Start with :meth:`start`; talk to it with :meth:`get` / :meth:`post`; :meth:`stop`."""

    data_dir: Path
    mqtt_url: str | None = None  # external broker; None: the hub starts its own
    database_url: str | None = None  # external database; None: SQLite in data_dir
    url: str = ""
    token: str = ""
    health: dict[str, Any] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _api: httpx.Client | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "hub.log"

    def start(self, *, within: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        api = free_port()
        env = {
            **os.environ,
            **FAST,
            "EDGELOOP_DATA_DIR": str(self.data_dir),
            "EDGELOOP_EMBEDDED_MQTT_PORT": str(free_port()),
            "EDGELOOP_GRPC_PORT": str(free_port()),
            "EDGELOOP_API_PORT": str(api),
        }
        if self.mqtt_url:
            env["EDGELOOP_MQTT_URL"] = self.mqtt_url
        if self.database_url:
            env["EDGELOOP_DATABASE_URL"] = self.database_url
        log = self.log_file.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop_cli", "hub", "serve"], env=env, stdout=log, stderr=log
        )
        self.url = f"http://127.0.0.1:{api}"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DemoError(f"the hub exited early; see {self.log_file}")
            try:
                answer = httpx.get(f"{self.url}/healthz", timeout=1)
                if answer.status_code == 200:
                    self.health = answer.json()
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            self.stop()
            raise DemoError(f"the hub did not start in {within:.0f} s; see {self.log_file}")
        self.token = (self.data_dir / "admin_token").read_text().strip()
        self._api = httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=600,
        )

    def stop(self) -> None:
        if self._api is not None:
            self._api.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    @property
    def grpc_endpoint(self) -> str:
        return str(self.health["grpc"])

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._api is not None, "start the hub first"
        response = self._api.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DemoError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body or {})

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self._call("PUT", path, json=body)
