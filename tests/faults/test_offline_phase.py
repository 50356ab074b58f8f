"""Fault: a device offline for the whole of a rollout phase.

Expected: the phase does not wait for it forever: after ``device_timeout_s`` the device is
``timed_out`` and the phase decides on the devices that reported; when the device comes
back its command (queued in its persistent broker session) runs and it ends on the
rollout's bundle, under the same command id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlmodel import select

from hub.core.db import session_scope
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import DeploymentEventRow
from tests.faults._world import FaultHub, wait_for
from tests.rollouts.fleet import fleet_of


def test_device_offline_for_a_phase_times_out_then_catches_up(
    fault_hub: FaultHub, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    hub = fault_hub.rollout_hub()
    b = hub.bundles

    async def scenario() -> None:
        async with fleet_of(hub, mosquitto_fresh, tmp_path) as (fleet, _):
            ids = ["off-0", "off-1", "off-2"]
            for d in ids:
                fleet.register(d)
                await fleet.start(d)
            await fleet.online(*ids)  # sessions exist, online states reach the hub
            await fleet.stop("off-2")  # away for the whole phase
            await asyncio.sleep(0.5)
            rid = fleet.create(
                digest=b.v1,
                version="1",
                selector="all",
                phases="100%",
                bake_s=0.5,
                device_timeout_s=3.0,
            )
            view = await fleet.until(rid, lambda v: v["state"] != "running", within=30)
            states = {d["id"]: d["state"] for d in view["devices"]}
            assert states == {"off-0": "healthy", "off-1": "healthy", "off-2": "timed_out"}, (
                states,
                view["state"],
                view["reason"],
            )
            assert any(e["kind"] == "device_timed_out" for e in view["events"]), view["events"]
            decided = view["state"]
            await fleet.start("off-2")  # back: the command queued in its session runs

            def caught_up() -> bool:
                return fleet.serving("off-2") == b.v1 and "healthy" in kinds()

            def kinds() -> dict[str, set[str]]:
                with session_scope(fleet.engine) as s:
                    rows = s.exec(
                        select(DeploymentEventRow).where(
                            DeploymentEventRow.rollout_id == rid,
                            DeploymentEventRow.device_id == "off-2",
                        )
                    ).all()
                    out: dict[str, set[str]] = {}
                    for r in rows:
                        out.setdefault(str(r.kind).lower().removeprefix("event_kind_"), set()).add(
                            r.command_id
                        )
                    return out

            await asyncio.to_thread(wait_for, caught_up, within=30, what="off-2 catches up")
            late = next(d for d in fleet.rollout(rid)["devices"] if d["id"] == "off-2")
            commands = set().union(*kinds().values())
            assert commands == {late["command_id"]}, kinds()  # the command it was sent, no new one
            print(f"phase decided {decided!r} without off-2; back, off-2 serves v1, row {late}")

    asyncio.run(scenario())
