"""Fault: the broker (a private Mosquitto) SIGKILLed and restarted while an agent sends
telemetry to a running ingest worker, and while a rollout commands devices.

What the design guarantees, and what is asserted: the agent deletes a window from its
durable queue only on PUBACK, and the ingest worker acks a message only after its batch is
committed, so a window is either in the hub DB or still on its way; the hub dedupes by
(device, seq). Every window the agent numbered is stored exactly once: no missing seq
(``hub.ingest.gaps``), no seq twice, the predictions' counts add up. The one window the
design cannot cover: a PUBACKed message Mosquitto held for the ingest session but had not
yet delivered or autosaved (``autosave_interval`` 1 s) dies with the broker. On loopback the
ingest session has it in memory within milliseconds, so the test does not observe it; the
README says so.

During a rollout: the controller's command waits in the broker (QoS 1, persistent session)
or is sent again under the same id; the rollout completes and every device has exactly one
command id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from hub.broker import EmbeddedBroker
from hub.db import create_all, make_engine
from hub.ingest import IngestWorker
from tests.agent.harness import Observer
from tests.faults._telemetry import DIGITS, agent_settings, register, serve_v1, stored
from tests.faults._world import FaultHub, wait_for
from tests.rollouts.fleet import fleet_of

DEVICE = "bk-1"


XFAIL_SHARED = pytest.mark.xfail(
    strict=False,  # a race: passes when the ingest worker reconnects before any agent sends
    reason="Mosquitto 2.0.11: after a restart (graceful or SIGKILL) a persistent session's "
    "$share subscription restored from the persistence file queues nothing while its client "
    "is offline; windows an agent publishes before the ingest worker is back are PUBACKed "
    "and lost (tests/faults/README.md)",
)
XFAIL_UNSAVED = pytest.mark.xfail(
    strict=False,
    reason="intermittent: after a SIGKILL with broker state newer than the last autosave the "
    "restored ingest session (plain subscriptions) sometimes gets no telemetry published "
    "after the restart; root cause not pinned (tests/faults/README.md)",
)


@pytest.mark.parametrize(
    ("shared", "saved"),
    [
        (False, True),
        pytest.param(True, True, marks=XFAIL_SHARED),
        pytest.param(False, False, marks=XFAIL_UNSAVED),
    ],
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
    settings = agent_settings(device_id=DEVICE, broker=mosquitto_fresh, hub=fault_hub, tmp=tmp_path)
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


@pytest.mark.xfail(
    strict=False,
    reason="intermittent, as XFAIL_UNSAVED: after a SIGKILL newer than the broker's autosave "
    "the restored ingest session sometimes receives nothing more, so the canary's later "
    "events never arrive and the phase waits device_timeout_s (tests/faults/README.md)",
)
def test_broker_sigkill_during_rollout_completes_one_command_per_device(
    fault_hub: FaultHub, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    from sqlmodel import select

    from hub.db import session_scope
    from hub.tables import DeploymentEventRow

    hub = fault_hub.rollout_hub()
    b = hub.bundles

    async def scenario() -> None:
        async with fleet_of(hub, mosquitto_fresh, tmp_path) as (fleet, _):
            ids = [f"bkr-{i}" for i in range(4)]
            for d in ids:
                fleet.register(d)
                await fleet.start(d)
            await asyncio.sleep(1.0)  # online states reach the hub
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
