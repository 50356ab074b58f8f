"""The whole hub SIGKILLed: ``edgeloop hub serve`` (SQLite, its embedded Mosquitto, gRPC,
rollout controller and ingest in one process) killed during a rollout phase and again while
telemetry flows, then started again on the same data dir and ports.

Three enrolled ``edgeloop agent run`` processes (password logins, broker ACL, hub delivery
acks) serve predictions made through their local API the whole time. Expected: the
embedded broker dies with the hub (PR_SET_PDEATHSIG), the agents outlive both and reconnect,
the rollout resumes and completes with one command id per device, and every prediction the
agents answered is counted once in the telemetry the hub stored: no window lost, none twice.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.tables import DeploymentEventRow
from tests.faults._telemetry import stored, table
from tests.fixtures.brokers import require_mosquitto
from tests.fixtures.hub_procs import Procs, enroll, until, until_up
from tests.fixtures.ports import free_port as _free_port

pytestmark = pytest.mark.timeout(300)

DEVICES = ("hk-1", "hk-2", "hk-3")
RECORD = [[[0.0] * 8] * 8]  # one 8x8 digit


class Traffic:
    """Predictions through each agent's local API from a thread; counts the answered ones."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.answered: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                for device, port in self.ports.items():
                    try:
                        answer = http.post(
                            f"http://127.0.0.1:{port}/v1/predict", json={"inputs": RECORD}
                        )
                    except httpx.TransportError:
                        continue
                    if answer.status_code == 200:  # 503 until a model is active
                        self.answered[device] += 1
                self._stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    running = Procs(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def test_hub_sigkill_during_a_rollout_phase_and_during_ingest(
    procs: Procs, tmp_path: Path, prepared_hub: Path
) -> None:
    require_mosquitto()
    data = prepared_hub
    api, grpc_port, mqtt_port = _free_port(), _free_port(), _free_port()
    env = {
        "EDGELOOP_DATA_DIR": str(data),
        "EDGELOOP_EMBEDDED_MQTT_PORT": str(mqtt_port),
        "EDGELOOP_EMBEDDED_BROKER": "mosquitto",
        "EDGELOOP_ROLLOUT_TICK_S": "0.2",
        "EDGELOOP_INGEST_ACK_INTERVAL_S": "0.2",
        "EDGELOOP_TRIGGER_INTERVAL_S": "0",
        "EDGELOOP_MONITOR_INTERVAL_S": "0",
    }
    serve = ["hub", "serve", "--port", str(api), "--grpc-port", str(grpc_port)]
    url = f"http://127.0.0.1:{api}"
    starts = 0

    def start_hub() -> subprocess.Popen[bytes]:
        nonlocal starts
        starts += 1
        proc = procs.start(f"hub-{starts}", serve, env)

        def healthy() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"hub exited with {proc.returncode}\n{procs.logs()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        until_up("hub /healthz", proc, healthy, procs.logs)
        return proc

    def kill_hub(proc: subprocess.Popen[bytes]) -> None:
        proc.kill()  # SIGKILL: no shutdown code runs
        proc.wait()
        until(
            "the embedded broker gone with the hub",
            lambda: not _port_open(mqtt_port),
            procs.logs,
        )

    hub = start_hub()
    admin = {"Authorization": f"Bearer {(data / 'admin_token').read_text().strip()}"}
    client = httpx.Client(base_url=f"{url}/api/v1", headers=admin, timeout=10)
    token = client.post("/enrollment-tokens", json={"group": "hk", "max_uses": len(DEVICES)})
    assert token.status_code == 201, token.text

    ports = {d: _free_port() for d in DEVICES}
    agents = {}
    for device in DEVICES:
        agent_dir = tmp_path / "agents" / device
        summary = enroll(
            grpc=f"127.0.0.1:{grpc_port}",
            token=token.json()["token"],
            device_id=device,
            agent_dir=agent_dir,
        )
        assert summary["device_id"] == device
        agents[device] = procs.start(
            f"agent-{device}",
            ["agent", "run", "--device-id", device, "--agent-dir", str(agent_dir),
             "--http-port", str(ports[device])],
            {
                "EDGELOOP_AGENT_TELEMETRY_WINDOW_S": "1",
                "EDGELOOP_AGENT_TELEMETRY_TICK_S": "0.2",
                "EDGELOOP_AGENT_HUB_ACK_TIMEOUT_S": "2",
                "EDGELOOP_AGENT_RECONNECT_MAX_S": "1",
            },
        )  # fmt: skip

    def all_online() -> bool:
        for device, agent in agents.items():
            if agent.poll() is not None:
                pytest.fail(f"agent {device} exited with {agent.returncode}\n{procs.logs()}")
        listed = client.get("/devices", params={"group": "hk"}).json()
        rows = listed["items"] if isinstance(listed, dict) else listed
        return sum(1 for d in rows if d["online"]) == len(DEVICES)

    until("every agent online", all_online, procs.logs)

    with Traffic(ports) as traffic:
        made = client.post(
            "/rollouts",
            json={
                "model": "digits-mlp",
                "version": "1",
                "selector": "group:hk",
                "phases": "1,100%",
                "bake_s": 3,
                "probation_s": 1,
                "gates": {},
            },
        )
        assert made.status_code == 201, made.text
        rollout_id = made.json()["id"]

        def view() -> dict[str, Any]:
            answer = client.get(f"/rollouts/{rollout_id}")
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        def canary_healthy() -> bool:
            return view()["device_states"].get("healthy", 0) == 1

        until("the canary device healthy (phase 0 baking)", canary_healthy, procs.logs)
        assert view()["state"] == "running" and view()["phase"] == 0
        kill_hub(hub)  # during the canary phase's bake: the rest not yet commanded
        time.sleep(1.0)  # the agents find the broker gone and keep serving
        assert all(agent.poll() is None for agent in agents.values()), procs.logs()
        hub = start_hub()

        def completed() -> dict[str, Any] | None:
            shown = view()
            assert shown["state"] not in {"failed", "rolled_back", "cancelled"}, shown
            return shown if shown["state"] == "completed" else None

        done = until("the rollout completed after the restart", completed, procs.logs)
        assert {d["id"]: d["state"] for d in done["devices"]} == dict.fromkeys(DEVICES, "healthy")
        until(
            "predictions answered by every device",
            lambda: all(traffic.answered[d] >= 20 for d in DEVICES),
            procs.logs,
        )
        kill_hub(hub)  # while telemetry flows into the ingest
        time.sleep(1.0)
        hub = start_hub()
        time.sleep(2.0)  # traffic goes on into the restarted hub

    answered = dict(traffic.answered)
    engine = make_engine(HubSettings(data_dir=data).resolved_database_url)
    try:

        def all_stored() -> bool:
            return all(stored(engine, d).predictions >= answered[d] for d in DEVICES)

        until("every answered prediction in the stored telemetry", all_stored, procs.logs)
        time.sleep(1.5)  # a window counted twice would show up now
        for device in DEVICES:
            got = stored(engine, device)
            assert got.predictions == answered[device], (device, got, answered)
            assert got.seqs == list(range(1, len(got.seqs) + 1)), (device, got.seqs)
            assert got.missing == 0 and got.dropped_windows == 0, (device, got)
        events = table(DeploymentEventRow)
        with engine.connect() as conn:
            rows = conn.execute(
                select(events.c.device_id, events.c.command_id).where(
                    events.c.rollout_id == rollout_id
                )
            ).all()
        commands = {d: {c for dev, c in rows if dev == d} for d in DEVICES}
        assert all(len(ids) == 1 for ids in commands.values()), commands
    finally:
        engine.dispose()
    assert all(agent.poll() is None for agent in agents.values()), procs.logs()
