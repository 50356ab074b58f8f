"""Rollouts against a real Mosquitto, real agents, real gRPC downloads, the real ingest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hub.core.artifacts import FileArtifactStore
from hub.core.db import session_scope
from hub.datasets.sources import load_source
from hub.mqtt.broker import EmbeddedBroker
from hub.rollouts import service
from hub.rpc.server import serve_grpc
from hub.rpc.slots import RESERVED_WORKERS
from tests.rollouts.fleet import Fleet, Hub, fleet_of

DIGITS = load_source("sklearn:digits")


async def _baseline(fleet: Fleet, hub: Hub, ids: list[str]) -> None:
    """Every device on v1 (itself a one-phase rollout)."""
    rid = fleet.create(digest=hub.bundles.v1, version="1", selector="all", phases="100%")
    view = await fleet.until(rid, lambda v: v["state"] == "completed")
    assert view["device_states"] == {"healthy": len(ids)}
    assert all(fleet.serving(d) == hub.bundles.v1 for d in ids)


def test_rollout_completes_across_phases_then_unhealthy_bundle_rolls_back(
    rollout_hub: Hub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    hub = rollout_hub

    async def scenario() -> None:
        async with fleet_of(hub, mosquitto, tmp_path) as (fleet, controller):
            ids = [f"cam-{i:02d}" for i in range(12)]
            for i, d in enumerate(ids):
                fleet.register(d, group="berlin" if i % 2 else "paris", hw="rpi4")
                await fleet.start(d)
            await _baseline(fleet, hub, ids)

            rid = fleet.create(
                digest=hub.bundles.v2, version="2", selector="hw=rpi4", phases="1,50%,100%"
            )
            view = await fleet.until(rid, lambda v: v["state"] == "completed")
            assert [p["devices"]["total"] for p in view["phases"]] == [1, 5, 6]
            assert [p["state"] for p in view["phases"]] == ["passed"] * 3
            assert all(g["passed"] for p in view["phases"] for g in p["gates"])
            names = {g["name"] for g in view["phases"][0]["gates"]}
            assert {"install_failure_rate", "error_rate", "latency_p95", "accuracy"} <= names
            assert all(d["attempts"] == 1 and d["previous_version"] == "1" for d in view["devices"])
            assert all(fleet.serving(d) == hub.bundles.v2 for d in ids)
            starts = [e["phase"] for e in view["events"] if e["kind"] == "phase_started"]
            assert starts == [0, 1, 2]

            # A bundle that fails its on-device health check: the canary fails, nothing else
            # is ever commanded, and the rollout ends rolled back with every device on v2.
            bad = fleet.create(
                digest=hub.bundles.unhealthy,
                version="9",
                selector="all",
                phases="1,50%,100%",
                bake_s=0.2,
            )
            view = await fleet.until(bad, lambda v: v["state"] == "rolled_back")
            states = sorted(d["state"] for d in view["devices"])
            assert states == ["failed"] + ["skipped"] * 11, states
            assert view["phases"][0]["state"] == "failed"
            assert [p["state"] for p in view["phases"][1:]] == ["skipped", "skipped"]
            assert "install_failure_rate" in view["reason"]
            assert all(fleet.serving(d) == hub.bundles.v2 for d in ids)
            assert controller.errors == 0

    asyncio.run(scenario())


def test_worse_label_accuracy_fails_its_gate_and_rolls_back(
    rollout_hub: Hub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    hub = rollout_hub

    async def traffic(fleet: Fleet, ids: list[str], stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            for d in ids:
                agent = fleet.agents[d]
                assert DIGITS.labels is not None
                x, y = DIGITS.features[i % 500 : i % 500 + 4], DIGITS.labels[i % 500 : i % 500 + 4]
                pred = agent.predict(x)
                for pid, label in zip(pred.ids, y, strict=True):
                    # the agent fills in what it predicted, with which version
                    agent.feedback(prediction_id=pid, label=int(label))
                i += 4
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        async with fleet_of(hub, mosquitto, tmp_path) as (fleet, _):
            ids = [f"acc-{i}" for i in range(6)]
            for d in ids:
                fleet.register(d)
                await fleet.start(d)
            await _baseline(fleet, hub, ids)
            stop = asyncio.Event()
            driver = asyncio.create_task(traffic(fleet, ids, stop))
            try:
                await asyncio.sleep(1.5)  # baseline labels for v1
                rid = fleet.create(
                    digest=hub.bad,
                    version="3",
                    selector="all",
                    phases="2,100%",
                    bake_s=3.0,
                    gates={"min_labels": 30},
                )
                view = await fleet.until(rid, lambda v: v["state"] == "rolled_back", within=60)
            finally:
                stop.set()
                await driver
            gates = {g["name"]: g for g in view["phases"][0]["gates"]}
            acc = gates["accuracy"]
            assert not acc["passed"] and not acc["insufficient_data"]
            assert (
                acc["value"] < acc["baseline"] - 0.02 and acc["threshold"] == acc["baseline"] - 0.02
            )
            assert gates["install_failure_rate"]["passed"]
            canary = [d for d in view["devices"] if d["phase"] == 0]
            assert len(canary) == 2 and all(d["state"] == "rolled_back" for d in canary)
            assert all(d["state"] == "skipped" for d in view["devices"] if d["phase"] != 0)
            await asyncio.sleep(0.3)
            assert all(fleet.serving(d) == hub.bundles.v1 for d in ids)

    asyncio.run(scenario())


def test_pause_resume_approve_advance_late_joiner_and_offline_device(
    rollout_hub: Hub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    hub = rollout_hub

    async def scenario() -> None:
        async with fleet_of(hub, mosquitto, tmp_path) as (fleet, _):
            ids = [f"op-{i}" for i in range(6)]
            for d in ids:
                fleet.register(d, site="a")
            for d in ids[:5]:
                await fleet.start(d)
            await asyncio.sleep(1.0)  # their online state reaches the hub
            rid = fleet.create(
                digest=hub.bundles.v2,
                version="2",
                selector="site=a",
                phases="1,50%,100%",
                approval_phases=[1],
                bake_s=4.0,
            )
            view = await fleet.until(rid, lambda v: v["phases"][0]["devices"].get("healthy") == 1)
            canary = [d for d in view["devices"] if d["phase"] == 0]
            assert len(canary) == 1 and canary[0]["id"] != "op-5"  # online devices first
            with session_scope(fleet.engine) as s:  # skip the canary's bake time
                service.advance(s, rollout_id=rid, reason="test")
            view = await fleet.until(rid, lambda v: v["state"] == "awaiting_approval")
            assert view["phase"] == 1 and view["phases"][0]["state"] == "advanced"
            assert view["phases"][1]["devices"]["total"] == 0  # nothing commanded before approval
            with session_scope(fleet.engine) as s:
                service.pause(s, rollout_id=rid)
            await asyncio.sleep(0.6)
            with session_scope(fleet.engine) as s:
                assert service.get_rollout(s, rollout_id=rid).state == "paused"
                service.resume(s, rollout_id=rid)
            await fleet.until(rid, lambda v: v["state"] == "awaiting_approval")
            with session_scope(fleet.engine) as s:
                service.approve(s, rollout_id=rid)
            view = await fleet.until(
                rid, lambda v: v["phase"] == 1 and v["phases"][1]["devices"].get("healthy") == 2
            )
            assert all(d["id"] != "op-5" for d in view["devices"] if d["phase"] in (0, 1))
            # a device that matches later joins the last phase
            fleet.register("op-late", site="a")
            await fleet.start("op-late")
            view = await fleet.until(rid, lambda v: any(d["id"] == "op-late" for d in v["devices"]))
            late = next(d for d in view["devices"] if d["id"] == "op-late")
            assert late["late"] and late["phase"] == 2
            with session_scope(fleet.engine) as s:
                service.advance(s, rollout_id=rid, reason="test")
            view = await fleet.until(
                rid, lambda v: v["phase"] == 2 and v["phases"][2]["devices"].get("healthy", 0) >= 3
            )
            assert view["phases"][1]["state"] == "advanced"
            offline = next(d for d in view["devices"] if d["id"] == "op-5")
            assert offline["state"] == "commanded"
            await fleet.start("op-5")  # comes back: its command waited in the broker
            view = await fleet.until(rid, lambda v: v["state"] == "completed")
            assert view["device_states"] == {"healthy": 7}
            assert fleet.serving("op-5") == hub.bundles.v2
            assert fleet.serving("op-late") == hub.bundles.v2

    asyncio.run(scenario())


def test_controller_sigkill_mid_rollout_resumes_without_double_commands(
    rollout_hub: Hub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from sqlmodel import select

    from hub.core.db import make_engine
    from hub.tables import DeploymentEventRow, create_all
    from tests.rollouts.fleet import Fleet

    hub = rollout_hub
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    engine = make_engine(db)
    create_all(engine)
    fleet = Fleet(hub=hub, broker=mosquitto, engine=engine, tmp=tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "hub.rollouts",
        "--database-url",
        db,
        "--mqtt-url",
        mosquitto.url,
        "--artifact-endpoint",
        hub.endpoint,
        "--fleet",
        fleet.name,
        "--tick-s",
        "0.2",
        "--max-commands-per-s",
        "3",
    ]
    root = Path(__file__).resolve().parents[2]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            cmd,
            cwd=root,
            env=dict(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def scenario() -> None:
        ids = [f"k-{i:02d}" for i in range(10)]
        for d in ids:
            fleet.register(d)
            await fleet.start(d)
        proc = start()
        try:
            rid = fleet.create(
                digest=hub.bundles.v2, version="2", selector="all", phases="1,100%", bake_s=0.5
            )
            # kill it while the last phase is being commanded (3 commands per second)
            await fleet.until(
                rid,
                lambda v: (
                    v["phase"] == 1 and 2 <= sum(d["command_id"] != "" for d in v["devices"]) < 9
                ),
                within=60,
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            await asyncio.sleep(0.5)
            proc = start()
            view = await fleet.until(rid, lambda v: v["state"] == "completed", within=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
            await fleet.close()
        assert view["device_states"] == {"healthy": 10}
        assert all(d["attempts"] == 1 for d in view["devices"])
        with session_scope(engine) as s:
            events = s.exec(
                select(DeploymentEventRow).where(DeploymentEventRow.rollout_id == rid)
            ).all()
        per_device: dict[str, set[str]] = {}
        for e in events:
            per_device.setdefault(e.device_id, set()).add(e.command_id)
        assert sorted(per_device) == ids  # none forgotten
        assert all(len(c) == 1 for c in per_device.values()), per_device  # one command id each

    asyncio.run(scenario())
    engine.dispose()


def test_deploys_are_admitted_by_the_artifact_servers_download_slots(
    rollout_hub: Hub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    """An artifact server with 2 download slots and 8 devices: the controller commands
    new deploys only into free slots (reported by the server), the rest wait their turn
    at the hub, and the rollout's report shows it; every device ends healthy."""
    hub = rollout_hub
    store = FileArtifactStore(root=hub.root / "artifacts")
    small = serve_grpc(store=store, host="127.0.0.1", port=0, max_workers=RESERVED_WORKERS + 2)
    slots = small.slots
    assert slots is not None and slots.capacity == 2

    async def scenario() -> None:
        async with fleet_of(
            hub,
            mosquitto,
            tmp_path,
            endpoint=f"127.0.0.1:{small.port}",
            capacity=slots.snapshot,
        ) as (fleet, controller):
            ids = [f"q-{i:02d}" for i in range(8)]
            for d in ids:
                fleet.register(d)
                await fleet.start(d)
            await fleet.online(*ids)
            rid = fleet.create(digest=hub.bundles.v1, version="1", selector="all", phases="100%")
            waiting: list[int] = []

            def done(view: dict[str, Any]) -> bool:
                waiting.append(view["queue"]["waiting_for_slot"])
                return bool(view["state"] == "completed")

            view = await fleet.until(rid, done, within=120)
            assert view["device_states"] == {"healthy": len(ids)}
            assert all(fleet.serving(d) == hub.bundles.v1 for d in ids)
            assert max(waiting) > 0  # devices queued at the hub for a slot
            queue = view["queue"]
            assert queue["admission_wait"]["devices"] == len(ids)
            assert queue["admission_wait"]["max_s"] > 0
            assert queue["waiting_for_slot"] == 0
            now = slots.snapshot()
            assert now.served >= len(ids) and now.in_flight == 0
            # refusals are rare (a device can start streaming a moment before its event
            # reaches the hub) and, when they happen, waited out, never a failure
            assert now.refused <= len(ids)
            assert controller.health()["download_slots"]["capacity"] == 2
            assert controller.errors == 0

    try:
        asyncio.run(scenario())
    finally:
        small.server.stop(None).wait()
