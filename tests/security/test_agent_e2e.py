"""The real processes over the secured broker: ``edgeloop hub serve`` (Mosquitto with passwd
+ ACL, TLS on), ``edgeloop agent enroll`` and ``edgeloop agent run`` as subprocesses.

The device enrols with a token from the admin API, comes online in the hub's registry, a
rollout of a bundle the hub signed reaches it and it reports healthy, and the telemetry
of predictions made through its local API is stored by the hub. Once with the default
password logins, once with client certificates (``EDGELOOP_MQTT_CLIENT_CERTS``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.brokers import require_mosquitto
from tests.fixtures.hub_procs import Procs, enroll, until, until_up
from tests.fixtures.ports import free_port as _free_port

DEVICE = "e2e-dev-1"


@dataclass
class Hub:
    proc: subprocess.Popen[bytes]
    data: Path
    url: str
    grpc_port: int
    mtls_port: int


MODES = {"password": False, "client-certs": True}


@pytest.fixture(scope="module")
def hubs(
    tmp_path_factory: pytest.TempPathFactory, prepared_hub_template: Path
) -> Iterator[dict[str, Hub]]:
    """One ``hub serve`` per mode, started together (each takes seconds to come up)."""
    require_mosquitto()
    root = tmp_path_factory.mktemp("e2e-hubs")
    procs = Procs(root)
    started: dict[str, Hub] = {}
    try:
        for mode, client_certs in MODES.items():
            data = Path(shutil.copytree(prepared_hub_template, root / mode))
            api, grpc_port, mqtt_port, mtls_port = (_free_port() for _ in range(4))
            env = {
                "EDGELOOP_DATA_DIR": str(data),
                "EDGELOOP_EMBEDDED_MQTT_PORT": str(mqtt_port),
                "EDGELOOP_EMBEDDED_BROKER": "mosquitto",
                "EDGELOOP_TLS_SELF_SIGNED": "1",
                "EDGELOOP_MQTT_CLIENT_CERTS": "1" if client_certs else "0",
                "EDGELOOP_ROLLOUT_TICK_S": "0.2",
                "EDGELOOP_TRIGGER_INTERVAL_S": "0",
                "EDGELOOP_MONITOR_INTERVAL_S": "0",
            }
            args = ["hub", "serve", "--port", str(api), "--grpc-port", str(grpc_port)]
            # (client certificates: bundle downloads on this port, hub.rpc.auth)
            args += ["--grpc-mtls-port", str(mtls_port)]
            started[mode] = Hub(
                proc=procs.start(f"hub-{mode}", args, env),
                data=data,
                url=f"http://127.0.0.1:{api}",
                grpc_port=grpc_port,
                mtls_port=mtls_port,
            )
        yield started
    finally:
        procs.stop_all()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    running = Procs(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.mark.parametrize("mode", list(MODES))
def test_enrolled_agent_process_deploys_and_reports(
    hubs: dict[str, Hub], procs: Procs, tmp_path: Path, mode: str
) -> None:
    client_certs = MODES[mode]
    the_hub = hubs[mode]
    hub, data, url, grpc_port = the_hub.proc, the_hub.data, the_hub.url, the_hub.grpc_port
    http_port = _free_port()
    hub_log = data.parent / f"hub-{mode}.log"

    def logs() -> str:
        return f"--- {hub_log.name} ---\n{hub_log.read_text()[-3000:]}\n{procs.logs()}"

    def healthy() -> dict[str, Any] | None:
        if hub.poll() is not None:
            pytest.fail(f"hub exited with {hub.returncode}\n{logs()}")
        try:
            answer = httpx.get(f"{url}/healthz", timeout=1)
        except httpx.TransportError:
            return None
        return answer.json() if answer.status_code == 200 else None

    health = until_up("hub /healthz", hub, healthy, logs)
    assert health["mqtt"]["url"].startswith("mqtts://"), health
    admin = {"Authorization": f"Bearer {(data / 'admin_token').read_text().strip()}"}
    client = httpx.Client(base_url=f"{url}/api/v1", headers=admin, timeout=10)
    token = client.post("/enrollment-tokens", json={"group": "e2e", "max_uses": 1})
    assert token.status_code == 201, token.text

    agent_dir = tmp_path / "agent"
    ca_file = data / "tls" / "ca.pem"
    summary = enroll(
        grpc=f"127.0.0.1:{grpc_port}",
        token=token.json()["token"],
        device_id=DEVICE,
        agent_dir=agent_dir,
        extra=("--ca-file", str(ca_file), "--capability", "runtime=onnx"),
    )
    assert summary["mqtt_url"].startswith("mqtts://")
    assert (summary["client_certificate"] is not None) == client_certs
    # with client certificates, bundles come from the port that requires one
    artifact_port = the_hub.mtls_port if client_certs else grpc_port
    assert summary["artifact_endpoint"] == f"127.0.0.1:{artifact_port}", summary
    stored = json.loads((agent_dir / DEVICE / "enrollment.json").read_text())
    assert bool(stored.get("client_cert_file")) == client_certs

    agent_env = {
        "EDGELOOP_AGENT_TELEMETRY_WINDOW_S": "1",
        "EDGELOOP_AGENT_TELEMETRY_TICK_S": "0.2",
        "EDGELOOP_AGENT_PROBATION_S": "1",
    }
    agent = procs.start(
        "agent",
        ["agent", "run", "--device-id", DEVICE, "--agent-dir", str(agent_dir),
         "--http-port", str(http_port)],
        agent_env,
    )  # fmt: skip

    def device() -> dict[str, Any] | None:
        if agent.poll() is not None:
            pytest.fail(f"agent exited with {agent.returncode}\n{logs()}")
        found = client.get(f"/devices/{DEVICE}")
        return found.json() if found.status_code == 200 and found.json()["online"] else None

    online = until("the agent online in the hub's registry", device, logs)
    assert online["group"] == "e2e" and online["capabilities"].get("runtime") == "onnx"

    made = client.post(
        "/rollouts",
        json={
            "model": "digits-mlp",
            "version": "1",
            "selector": f"id:{DEVICE}",
            "phases": "100%",
            "bake_s": 0,
            "probation_s": 1,
            "gates": {},
        },
    )
    assert made.status_code == 201, made.text
    rollout_id = made.json()["id"]

    def on_device() -> dict[str, Any] | None:
        if agent.poll() is not None:
            pytest.fail(f"agent exited with {agent.returncode}\n{logs()}")
        try:
            answer = httpx.get(f"http://127.0.0.1:{http_port}/v1/health", timeout=1).json()
        except httpx.TransportError:
            return None
        return answer if answer.get("status") == "ok" else None

    active = until("the rolled-out bundle active on the device", on_device, logs)
    assert active["model"] == "digits-mlp" and str(active["version"]) == "1", active
    assert active["rejected"]["malformed_commands"] == 0, active  # counters on the endpoint

    def rollout_done() -> dict[str, Any] | None:
        view = client.get(f"/rollouts/{rollout_id}").json()
        return view if view["state"] in {"completed", "succeeded", "done"} else None

    until("the rollout completed (device reported healthy)", rollout_done, logs)

    predicted = httpx.post(
        f"http://127.0.0.1:{http_port}/v1/predict",
        json={"inputs": [[[0.0] * 8] * 8] * 4},
        timeout=10,
    )
    assert predicted.status_code == 200, predicted.text

    def telemetry() -> dict[str, Any] | None:
        stats = client.get("/ingest/stats", params={"device_id": DEVICE}).json()
        streams = [s for s in stats["streams"] if s.get("stream") == "telemetry"]
        return stats if streams and stats["devices"] == 1 else None

    stats = until("the device's telemetry stored by the hub", telemetry, logs)
    assert stats["missing"] == 0, stats
