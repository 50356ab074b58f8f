"""Two rollout controllers on one PostgreSQL database, the leader SIGKILLed mid-rollout.

Real processes: one ``hub serve --components api,grpc,ingest`` replica, two
``hub serve --components controller`` replicas, an external Mosquitto, two
``edgeloop agent run`` devices. Expected: exactly one controller leads (the ``rollouts``
lease in ``GET /api/v1/cluster``). During the canary phase's bake the leader hangs
(SIGSTOP: its connection stays): the other takes the lease once it expires, and the woken
one stands by; then the new leader is SIGKILLed: the first takes the lease back within one
lease period (its advisory lock went with the dead connection). Both times are measured and
printed. The rollout completes, and each device saw one command id.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from hub.core.db import make_engine
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import DeploymentEventRow, RolloutDevice
from tests.fixtures.hub_procs import Procs, prepare_hub, until, until_up
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.timeout(240)

DEVICES = ("cf-1", "cf-2")
LEASE_S = 3.0


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    running = Procs(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def test_a_hung_then_a_killed_leading_controller_mid_rollout(
    procs: Procs, tmp_path: Path, fresh_postgres: str, mosquitto_fresh: EmbeddedBroker
) -> None:
    data = tmp_path / "hub"
    prepare_hub(data, database_url=fresh_postgres)
    api, grpc_port = free_port(), free_port()
    base = {
        "EDGELOOP_DATA_DIR": str(data),
        "EDGELOOP_DATABASE_URL": fresh_postgres,
        "EDGELOOP_CLUSTER_LEASE_S": str(LEASE_S),
        "EDGELOOP_ROLLOUT_TICK_S": "0.2",
        "EDGELOOP_INGEST_ACK_INTERVAL_S": "0.2",
        "EDGELOOP_TRIGGER_INTERVAL_S": "0",
        "EDGELOOP_MONITOR_INTERVAL_S": "0",
        "EDGELOOP_DEVICE_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
    }
    mqtt = ["--mqtt-url", mosquitto_fresh.url]
    front = procs.start(
        "api",
        ["hub", "serve", "--components", "api,grpc,ingest", "--port", str(api),
         "--grpc-port", str(grpc_port), *mqtt],
        {**base, "EDGELOOP_REPLICA_ID": "api-1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{api}"

    def healthy() -> bool:
        if front.poll() is not None:
            pytest.fail(f"api replica exited with {front.returncode}\n{procs.logs()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    until_up("api replica /healthz", front, healthy, procs.logs)
    controllers = {
        name: procs.start(
            name,
            ["hub", "serve", "--components", "controller", *mqtt],
            {**base, "EDGELOOP_REPLICA_ID": name},
        )
        for name in ("ctl-1", "ctl-2")
    }
    admin = {"Authorization": f"Bearer {(data / 'admin_token').read_text().strip()}"}
    client = httpx.Client(base_url=f"{url}/api/v1", headers=admin, timeout=10)

    def cluster() -> dict[str, Any]:
        answer = client.get("/cluster")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def leader() -> str | None:
        shown = cluster()
        alive = shown["components"]["controller"]
        leases = {lease["name"]: lease for lease in shown["leases"]}
        lease = leases.get("rollouts")
        if len(alive) < 2 or lease is None or not lease["valid"]:
            return None
        return str(lease["holder"])

    for name, proc in controllers.items():
        until_up(f"{name} in the cluster", proc, leader, procs.logs)
    first = leader()
    assert first in controllers
    status = cluster()
    assert status["components"]["api"] == ["api-1"]
    assert sorted(status["components"]["controller"]) == ["ctl-1", "ctl-2"]

    public = client.get("/keys/public").json()["pem"]
    (tmp_path / "bundle.pub").write_text(public)
    for device in DEVICES:
        made = client.post("/devices", json={"id": device, "group": "cf"})
        assert made.status_code == 201, made.text
        procs.start(
            f"agent-{device}",
            ["agent", "run", "--device-id", device, "--mqtt-url", mosquitto_fresh.url,
             "--public-key", str(tmp_path / "bundle.pub"),
             "--agent-dir", str(tmp_path / "agents" / device)],
            {
                "EDGELOOP_AGENT_TELEMETRY_WINDOW_S": "1",
                "EDGELOOP_AGENT_TELEMETRY_TICK_S": "0.2",
                "EDGELOOP_AGENT_RECONNECT_MAX_S": "1",
                "EDGELOOP_AGENT_PROBATION_S": "0.3",
            },
        )  # fmt: skip

    def all_online() -> bool:
        listed = client.get("/devices", params={"group": "cf"}).json()
        rows = listed["items"] if isinstance(listed, dict) else listed
        return sum(1 for d in rows if d["online"]) == len(DEVICES)

    until("every agent online", all_online, procs.logs)
    made = client.post(
        "/rollouts",
        json={
            "model": "digits-mlp",
            "version": "1",
            "selector": "group:cf",
            "phases": "1,100%",
            "bake_s": 8,
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

    until(
        "the canary healthy (phase 0 baking)",
        lambda: view()["device_states"].get("healthy", 0) == 1,
        procs.logs,
    )
    assert view()["state"] == "running" and view()["phase"] == 0
    assert leader() == first
    second = next(n for n in controllers if n != first)

    def lease_now() -> dict[str, Any]:
        return dict({lease["name"]: lease for lease in cluster()["leases"]}["rollouts"])

    def measure(holder: str, within: float) -> float:
        at = time.monotonic()
        while not (lease_now()["holder"] == holder and lease_now()["valid"]):
            assert time.monotonic() - at < within, procs.logs()
            time.sleep(0.05)  # measuring the takeover, bounded above
        return time.monotonic() - at

    # the leader hangs (SIGSTOP): its database connection and advisory lock stay, so the
    # standby waits for the lease to expire
    term = lease_now()["term"]
    controllers[first].send_signal(signal.SIGSTOP)
    hung_s = measure(second, within=3 * LEASE_S)
    controllers[first].send_signal(signal.SIGCONT)
    print(f"controller failover after a hang: {hung_s:.2f} s (lease period {LEASE_S:g} s)")
    assert hung_s <= LEASE_S + LEASE_S / 3 + 0.5, hung_s
    assert lease_now()["term"] == term + 1
    time.sleep(LEASE_S / 2)  # the woken one finds it lost the lease and stands by
    assert lease_now()["holder"] == second and lease_now()["term"] == term + 1
    assert view()["state"] == "running", view()

    # the new leader dies (SIGKILL): no handover, the lease row says it is still held, but
    # its advisory lock went with its connection
    killed = controllers[second]
    killed.kill()
    killed.wait()
    failover_s = measure(first, within=3 * LEASE_S)
    print(f"controller failover after SIGKILL: {failover_s:.2f} s (lease period {LEASE_S:g} s)")
    assert failover_s <= LEASE_S, failover_s

    def completed() -> dict[str, Any] | None:
        shown = view()
        assert shown["state"] not in {"failed", "rolled_back", "cancelled", "paused"}, shown
        return shown if shown["state"] == "completed" else None

    done = until("the rollout completed under the new leader", completed, procs.logs)
    assert {d["id"]: d["state"] for d in done["devices"]} == dict.fromkeys(DEVICES, "healthy")
    engine = make_engine(fresh_postgres)
    try:
        with engine.connect() as conn:
            events = conn.execute(
                select(DeploymentEventRow.device_id, DeploymentEventRow.command_id).where(  # type: ignore[call-overload]
                    DeploymentEventRow.rollout_id == rollout_id
                )
            ).all()
            staged = conn.execute(
                select(RolloutDevice.device_id, RolloutDevice.command_id).where(  # type: ignore[call-overload]
                    RolloutDevice.rollout_id == rollout_id
                )
            ).all()
    finally:
        engine.dispose()
    commands = {d: {c for dev, c in events if dev == d} for d in DEVICES}
    assert all(len(ids) == 1 for ids in commands.values()), commands
    assert {d: {c} for d, c in staged} == commands
