"""The deployment recipe, run as written: ``deploy/cluster.Procfile`` (api x2, ingest x2,
monitor x2, controller x2) as plain processes on one PostgreSQL database, an external
Mosquitto and the S3-compatible test server (moto, ``tests/fixtures/s3.py``) as the artifact
store, bundles downloaded by presigned URL. One end-to-end pass: devices enrol through one
API replica's gRPC, a rollout made through the other completes, the agents' telemetry is
ingested and the drift it carries (blank images against a digits model) raises alerts, each
scope's once; ``GET /api/v1/cluster`` shows two live replicas of every component and a
holder for every lease."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.mqtt.broker import EmbeddedBroker
from tests.fixtures.hub_procs import enroll, prepare_hub, until, until_up
from tests.fixtures.ports import free_port
from tests.fixtures.s3 import S3Server, s3_env

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "deploy" / "cluster.Procfile"
DEVICES = ("rc-1", "rc-2")
BLANK = [[[0.0] * 8] * 8]  # far from every digit: drift
TOKEN = "recipe-admin-token-0123456789abcdef"


def procfile(path: Path) -> dict[str, str]:
    """``name: command`` lines (comments and blank lines skipped)."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


class Launcher:
    """Each Procfile entry as ``sh -c`` with the shared environment; logs per process."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            ["sh", "-c", f"exec env {command}"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{(self.folder / f'{name}.log').read_text()[-2500:]}"
            for name in self.procs
        )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    shim = tmp_path / "bin"
    shim.mkdir()
    edgeloop = shim / "edgeloop"  # the console script, on this test's interpreter and tree
    edgeloop.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edgeloop_cli "$@"\n')
    edgeloop.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ.get('PATH', '')}"}
    running = Launcher(tmp_path, env)
    try:
        yield running
    finally:
        running.stop_all()


def test_the_procfile_recipe_end_to_end(
    launcher: Launcher,
    tmp_path: Path,
    fresh_postgres: str,
    mosquitto_fresh: EmbeddedBroker,
    s3_server: S3Server,
    s3_url: str,
) -> None:
    data = tmp_path / "hub"
    prepare_hub(data, database_url=fresh_postgres, artifact_url=s3_url)
    ports = {k: free_port() for k in ("API_1_PORT", "API_2_PORT", "GRPC_1_PORT", "GRPC_2_PORT")}
    launcher.env.update(
        {
            **{k: str(v) for k, v in ports.items()},
            "EDGELOOP_DATA_DIR": str(data),
            "EDGELOOP_DATABASE_URL": fresh_postgres,
            "EDGELOOP_ARTIFACT_URL": s3_url,
            "EDGELOOP_ARTIFACT_PRESIGN": "true",
            **s3_env(),
            "EDGELOOP_MQTT_URL": mosquitto_fresh.url,
            "EDGELOOP_ADMIN_TOKEN": TOKEN,
            "EDGELOOP_DEVICE_GRPC_ENDPOINT": f"127.0.0.1:{ports['GRPC_1_PORT']}",
            "EDGELOOP_INGEST_SHARED": "true",
            "EDGELOOP_INGEST_ACK_INTERVAL_S": "0.2",
            "EDGELOOP_CLUSTER_LEASE_S": "3",
            "EDGELOOP_ROLLOUT_TICK_S": "0.2",
            "EDGELOOP_MONITOR_INTERVAL_S": "1",
            "EDGELOOP_MONITOR_WINDOW_SIZE": "50",
        }
    )
    entries = procfile(PROCFILE)
    assert Counter(re.sub(r"-\d+$", "", n) for n in entries) == {
        "api": 2, "ingest": 2, "monitor": 2, "controller": 2,
    }  # fmt: skip
    started = time.monotonic()
    procs = {name: launcher.start(name, command) for name, command in entries.items()}
    apis = [f"http://127.0.0.1:{ports['API_1_PORT']}", f"http://127.0.0.1:{ports['API_2_PORT']}"]
    for url, name in zip(apis, ("api-1", "api-2"), strict=True):

        def healthy(url: str = url, name: str = name) -> bool:
            if procs[name].poll() is not None:
                pytest.fail(f"{name} exited with {procs[name].returncode}\n{launcher.logs()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        until_up(f"{name} /healthz", procs[name], healthy, launcher.logs)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    one, two = (httpx.Client(base_url=f"{u}/api/v1", headers=admin, timeout=10) for u in apis)

    def whole() -> dict[str, Any] | None:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{launcher.logs()}")
        shown: dict[str, Any] = two.get("/cluster").json()
        live = {c: len(ids) for c, ids in shown["components"].items()}
        held = {lease["name"] for lease in shown["leases"] if lease["valid"]}
        want = {"rollouts", "key-rotation", "retention", "triggers"}
        return shown if live == dict.fromkeys(live, 2) and held >= want else None

    shown = until("every replica up, every lease held", whole, launcher.logs)
    print(f"recipe: 8 replicas up after {time.monotonic() - started:.1f} s")
    assert len([r for r in shown["replicas"] if r["alive"]]) == 8
    holders = {lease["name"]: lease["holder"] for lease in shown["leases"]}
    assert holders["rollouts"].startswith("controller-")

    token = one.post("/enrollment-tokens", json={"group": "rc", "max_uses": len(DEVICES)})
    assert token.status_code == 201, token.text
    http_ports = {d: free_port() for d in DEVICES}
    for device in DEVICES:
        agent_dir = tmp_path / "agents" / device
        summary = enroll(
            grpc=f"127.0.0.1:{ports['GRPC_2_PORT']}",
            token=token.json()["token"],
            device_id=device,
            agent_dir=agent_dir,
        )
        assert summary["device_id"] == device
        launcher.start(
            f"agent-{device}",
            f"EDGELOOP_AGENT_TELEMETRY_WINDOW_S=1 EDGELOOP_AGENT_TELEMETRY_TICK_S=0.2 "
            f"EDGELOOP_AGENT_RECONNECT_MAX_S=1 EDGELOOP_AGENT_PROBATION_S=0.3 "
            f"edgeloop agent run --device-id {device} --agent-dir {agent_dir} "
            f"--http-port {http_ports[device]}",
        )

    def online() -> bool:
        listed = two.get("/devices", params={"group": "rc"}).json()
        rows = listed["items"] if isinstance(listed, dict) else listed
        return sum(1 for d in rows if d["online"]) == len(DEVICES)

    until("every agent online", online, launcher.logs)
    made = two.post(
        "/rollouts",
        json={"model": "digits-mlp", "version": "1", "selector": "group:rc",
              "phases": "100%", "bake_s": 1, "probation_s": 1, "gates": {}},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    rollout = made.json()["id"]

    def completed() -> bool:
        state = one.get(f"/rollouts/{rollout}").json()["state"]
        assert state not in {"failed", "rolled_back", "cancelled", "paused"}, state
        return bool(state == "completed")

    until("the rollout completed", completed, launcher.logs)
    # each agent fetched the bundle from the object store by its presigned URL (the S3
    # server's request log: a signed GET), not through an API replica's gRPC
    signed_gets = [
        line
        for line in s3_server.log.read_text(errors="replace").splitlines()
        if '"GET /' in line and "X-Amz-Signature=" in line
    ]
    assert len(signed_gets) >= len(DEVICES), s3_server.log.read_text()[-3000:]
    print(f"recipe: rollout completed at {time.monotonic() - started:.1f} s")

    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                for port in http_ports.values():
                    with contextlib.suppress(httpx.TransportError):  # 503 until a model is active
                        http.post(f"http://127.0.0.1:{port}/v1/predict", json={"inputs": BLANK})
                stop.wait(0.01)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:

        def alerted() -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = one.get(
                "/monitor/alerts", params={"kind": "drift"}
            ).json()
            scopes = {a["scope"] for a in found}
            # the fleet's scopes: the budget spreads fewer false alarms over device scopes,
            # which need more windows than this test waits for
            return found if {"group:rc", "version:digits-mlp@1"} <= scopes else None

        alerts = until("drift alerts on the group and the version", alerted, launcher.logs)
    finally:
        stop.set()
        sender.join(10)
    print(f"recipe: drift alerts at {time.monotonic() - started:.1f} s")
    keys = Counter((a["scope"], a["detector"]) for a in alerts if a["resolved_at"] is None)
    assert set(keys.values()) == {1}, keys
