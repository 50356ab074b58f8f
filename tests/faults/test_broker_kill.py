"""Fault: the broker (a private Mosquitto) SIGKILLed and restarted while an agent sends
telemetry to a running ingest worker, and while a rollout commands devices.

What the design guarantees, and what is asserted: the agent (``delivery = "hub_ack"``)
deletes a window from its durable queue only when the hub's ``DeliveryAck`` covers it, and
the ingest worker acks only after its batch is committed, so a window is either in the hub
DB or still in the agent's queue, sent again after ``hub_ack_timeout_s`` and on reconnect;
the hub dedupes by (device, seq). Every window the agent numbered is stored exactly once: no
missing seq (``hub.ingest.gaps``), no seq twice, the predictions' counts add up. That holds
also for what the broker PUBACKed and then lost: state newer than its autosave, or windows a
restored ``$share`` subscription did not queue while the worker was away (Mosquitto 2.0.11);
with broker-ack delivery those were lost (the earlier xfails, tests/faults/README.md).

During a rollout: the controller's command waits in the broker (QoS 1, persistent session)
or is sent again under the same id; a deploy under way when the broker dies goes on (the
agent's command handler outlives the connection) and its events reach the hub on the hub-ack
path; the rollout completes and every device has exactly one command id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from hub.core.db import make_engine
from hub.ingest import IngestWorker
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import create_all
from tests.agent.harness import Observer
from tests.faults._telemetry import DIGITS, agent_settings, register, serve_v1, stored
from tests.faults._world import FaultHub, wait_for
from tests.rollouts.fleet import fleet_of

DEVICE = "bk-1"


@pytest.mark.parametrize(
    ("shared", "saved"),
    [(False, True), (True, True), (False, False)],
    ids=["plain-saved", "shared-saved", "plain-unsaved"],
)
def test_broker_sigkill_during_telemetry_stores_every_window_once(
    fault_hub: FaultHub,
    mosquitto_fresh: EmbeddedBroker,
    tmp_path: Path,
    shared: bool,
    saved: bool,
) -> None:
    """``saved``: the broker's persistence is written (SIGUSR1) right before the SIGKILL, so
    the kill loses nothing the broker had; otherwise up to ``autosave_interval`` of state."""
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    register(engine, DEVICE)
    ingest = IngestWorker(
        engine=engine,
        mqtt_url=mosquitto_fresh.url,
        client_id="ingest-bk",
        batch_interval_s=0.05,
        shared=shared,
    )
    settings = agent_settings(
        device_id=DEVICE,
        broker=mosquitto_fresh,
        hub=fault_hub,
        tmp=tmp_path,
        delivery="hub_ack",
        hub_ack_timeout_s=2.0,
    )
    agent = Agent(settings=settings)
    predictions = 0

    async def predict(n: int) -> None:
        nonlocal predictions
        for i in range(n):
            agent.predict(DIGITS[i % 100 : i % 100 + 1])
            predictions += 1
            await asyncio.sleep(0.005)

    async def scenario() -> None:
        async with Observer(broker_port=mosquitto_fresh.port).running() as obs:
            await serve_v1(obs, agent, fault_hub)
        await predict(60)  # ~12 windows sent while the broker runs
        if saved:
            mosquitto_fresh.save()
        mosquitto_fresh.kill()  # SIGKILL: no goodbye, no final save
        await predict(60)  # the agent keeps serving; windows pile up in its queue
        await asyncio.sleep(0.3)
        assert len(agent.queue) >= 2, "windows are held on the device while the broker is gone"
        mosquitto_fresh.start()
        await predict(40)
        agent.flush()
        await asyncio.to_thread(
            wait_for, lambda: len(agent.queue) == 0, within=30, what="the queue drains"
        )

    async def main() -> None:
        async with agent:
            await scenario()

    with ingest:
        asyncio.run(main())
        produced = agent.queue.last_seqs()["telemetry"]
        # every window (and deployment event) left the queue on the hub's ack
        assert agent.session.stats.hub_acked == sum(agent.queue.last_seqs().values())

        def all_stored() -> bool:
            ingest.flush()
            return len(stored(engine, DEVICE).seqs) >= produced

        try:  # the ingest worker reconnects within its 5 s backoff
            wait_for(all_stored, within=12, what=f"{produced} windows in the hub DB")
        except AssertionError:
            seen = stored(engine, DEVICE).seqs
            raise AssertionError(f"produced {produced}, stored {seen}, {ingest.stats()}") from None
        stats = ingest.stats()
    result = stored(engine, DEVICE)
    engine.dispose()
    assert result.seqs == list(range(1, produced + 1)), result.seqs  # each seq once, none lost
    assert result.missing == 0 and result.dropped_windows == 0
    assert result.predictions == predictions  # every prediction counted once
    assert stats.rejected_total == 0, stats


def test_broker_sigkill_during_rollout_completes_one_command_per_device(
    fault_hub: FaultHub, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    from sqlmodel import select

    from hub.core.db import session_scope
    from hub.tables import DeploymentEventRow

    hub = fault_hub.rollout_hub()
    b = hub.bundles

    async def scenario() -> None:
        async with fleet_of(hub, mosquitto_fresh, tmp_path) as (fleet, _):
            ids = [f"bkr-{i}" for i in range(4)]
            for d in ids:
                fleet.register(d)
                await fleet.start(d)
            await fleet.online(*ids)  # online states reach the hub
            rid = fleet.create(
                digest=b.v1, version="1", selector="all", phases="1,100%", bake_s=1.0
            )
            # kill the broker once the canary is commanded, again in the last phase
            await fleet.until(rid, lambda v: v["phases"][0]["devices"]["total"] == 1)
            mosquitto_fresh.kill()
            await asyncio.sleep(1.5)
            mosquitto_fresh.start()
            await fleet.until(rid, lambda v: v["phase"] == 1, within=25)
            mosquitto_fresh.kill()
            await asyncio.sleep(1.0)
            mosquitto_fresh.start()
            view = await fleet.until(rid, lambda v: v["state"] == "completed", within=30)
            assert view["device_states"] == {"healthy": len(ids)}
            assert all(fleet.serving(d) == b.v1 for d in ids)
            with session_scope(fleet.engine) as s:
                rows = s.exec(
                    select(DeploymentEventRow).where(DeploymentEventRow.rollout_id == rid)
                ).all()
            commands: dict[str, set[str]] = {}
            for row in rows:
                commands.setdefault(row.device_id, set()).add(row.command_id)
            assert {d: len(c) for d, c in commands.items()} == {d: 1 for d in ids}, commands
            assert all(d["attempts"] == 1 for d in view["devices"]), view["devices"]

    asyncio.run(scenario())
