"""One scenario's fleet over two worker processes: the same devices a single-process fleet
builds, all online, all serving a bundle deployed in two waves, telemetry arriving from both
workers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from hub.mqtt.broker import EmbeddedBroker
from proto.topics import Topics
from simulators.counting import StreamCounter
from simulators.fleet import Fleet, wait_until
from simulators.plan import device_ids
from simulators.scenario import Scenario, parse_scenario
from simulators.shards import ShardedFleet
from tests.simulators.conftest import SimHub

FAST = {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, "probation_s": 0.0}


def _scenario(name: str) -> Scenario:
    return parse_scenario(
        f"""
name = "sharded"
seed = 5
[fleet]
devices = 20
name = "{name}"
stagger_s = 0.0
telemetry_window_s = 0.5
telemetry_tick_s = 0.1
[[groups]]
name = "edge"
fraction = 0.3
[data]
rate_hz = 5
[[drift]]
kind = "noise"
fraction = 0.5
"""
    )


def test_shards_build_the_devices_a_single_fleet_builds(tmp_path: Path, sim_hub: SimHub) -> None:
    scenario = _scenario("plan")

    def built(shard: tuple[int, int] | None) -> dict[str, tuple[str, bool]]:
        fleet = Fleet(
            root=tmp_path,
            mqtt_url="mqtt://127.0.0.1:1",
            public_key=sim_hub.public_key_file,
            scenario=scenario,
            shard=shard,
        )
        fleet._build_devices()  # what start() builds, without connecting
        return {i: (d.group.name, d.drifted) for i, d in fleet.devices.items()}

    whole = built(None)
    parts = [built((i, 3)) for i in range(3)]
    assert sum(len(p) for p in parts) == len(whole) == 20
    assert {k: v for p in parts for k, v in p.items()} == whole
    assert sum(drifted for _, drifted in whole.values()) == 10


def test_a_sharded_fleet_end_to_end(
    sim_hub: SimHub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    fleet_name = f"t{uuid.uuid4().hex[:8]}"
    scenario = _scenario(fleet_name)

    async def run() -> None:
        async with (
            StreamCounter(
                host="127.0.0.1",
                port=mosquitto.port,
                topics=Topics(prefix="edgeloop/v1", fleet=fleet_name),
            ) as counter,
            ShardedFleet(
                processes=2,
                root=tmp_path / "fleet",
                mqtt_url=mosquitto.url,
                public_key=sim_hub.public_key_file,
                scenario=scenario,
                agent_options=FAST,
            ) as fleet,
        ):
            assert len(fleet.pids) == 2
            ids = await fleet.device_ids()
            assert sorted(ids) == device_ids(scenario, 20)
            assert await wait_until(lambda: counter.online_count(ids) == 20, within=60)
            assert (await fleet.counters())["connected"] == 20

            # a wave of 5 devices (from both workers), then the rest: each gets one command
            first = sorted(ids)[:5]
            sent = await fleet.deploy(sim_hub.good, endpoint=sim_hub.host.endpoint, devices=first)
            assert sorted(sent) == first
            assert await fleet.wait_for("serving", 5, within=60) == 5
            await asyncio.sleep(0.5)
            assert (await fleet.counters())["serving"] == 5  # nobody outside the wave
            rest = [i for i in ids if i not in first]
            sent |= await fleet.deploy(sim_hub.good, endpoint=sim_hub.host.endpoint, devices=rest)
            assert sorted(sent) == sorted(ids)
            assert await fleet.wait_for("serving", 20, within=60) == 20

            # telemetry from every device, so from both workers (devices 0, 2, .. and 1, 3, ..)
            def reporting() -> int:
                return sum(1 for i in ids if counter.received.get((i, "telemetry")))

            assert await wait_until(lambda: reporting() == 20, within=30), reporting()
            counts = await fleet.counters()
            assert counts["predictions"] > 0 and counts["predict_errors"] == 0, counts
            expected = await fleet.expected_seqs()
            assert sorted(expected) == sorted(ids)
            assert all(s.get("telemetry", 0) >= 1 for s in expected.values())

    asyncio.run(run())
