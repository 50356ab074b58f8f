"""Fault: devices whose clocks are hours off (+3 h and -3 h; ``time.time`` shifted in the
agent process by ``_skew.py``, since faketime is not installed).

Expected: nothing on the hub depends on the device clock: the rollout progresses and
completes (commands carry the hub's ``issued_at``; timeouts run on the hub's clock), every
event is stored once with the device's own ``at`` and the hub's ``received_at``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from hub.mqtt.broker import EmbeddedBroker
from hub.tables import DeploymentEventRow
from tests.faults._telemetry import table
from tests.faults._world import FaultHub, agent_process, stop_process
from tests.rollouts.fleet import fleet_of

SKEW_S = {"skew-ahead": 3 * 3600.0, "skew-behind": -3 * 3600.0, "skew-none": 0.0}
SHIM = Path(__file__).with_name("_skew.py")


def test_clock_skewed_devices_complete_a_rollout(
    fault_hub: FaultHub, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    hub = fault_hub.rollout_hub()
    b = hub.bundles

    async def scenario() -> None:
        procs: list[subprocess.Popen[bytes]] = []
        async with fleet_of(hub, mosquitto_fresh, tmp_path) as (fleet, _):
            try:
                for device, offset in SKEW_S.items():
                    fleet.register(device)
                    procs.append(
                        agent_process(
                            device_id=device,
                            mqtt_url=mosquitto_fresh.url,
                            public_key=b.public_key_file,
                            agent_dir=tmp_path / "agents",
                            fleet=fleet.name,
                            env={"EDGELOOP_TEST_CLOCK_OFFSET_S": str(offset)},
                            prefix=[sys.executable, str(SHIM)],
                            log=tmp_path / f"{device}.log",
                        )
                    )
                # agents start (a child process each) and go online; a fixed 3 s sleep here
                # was too short on a loaded box: the canary's command went out before its
                # agent had subscribed (see test_rollout_controller's clock-behind test)
                await fleet.online(*SKEW_S)
                rid = fleet.create(
                    digest=b.v1,
                    version="1",
                    selector="all",
                    phases="1,100%",
                    bake_s=0.5,
                    device_timeout_s=60.0,
                )
                view = await fleet.until(rid, lambda v: v["state"] != "running", within=60)
                assert view["state"] == "completed", (view["reason"], view["devices"])
                assert view["device_states"] == {"healthy": len(SKEW_S)}
                t = table(DeploymentEventRow)
                with fleet.engine.connect() as conn:
                    rows = conn.execute(
                        select(
                            t.c.device_id, t.c.event_id, t.c.command_id, t.c.at, t.c.received_at
                        ).where(t.c.rollout_id == rid)
                    ).all()
            finally:
                for proc in procs:
                    stop_process(proc)
        by_device: dict[str, list[tuple[str, str, timedelta]]] = {}
        for device, event_id, command_id, at, received_at in rows:
            by_device.setdefault(device, []).append((event_id, command_id, at - received_at))
        assert set(by_device) == set(SKEW_S)
        for device, offset in SKEW_S.items():
            events = by_device[device]
            assert len({e for e, _, _ in events}) == len(events)  # each event once
            assert len({c for _, c, _ in events}) == 1  # one command
            for _, _, lag in events:  # device time kept, hub time beside it
                assert abs(lag.total_seconds() - offset) < 60, (device, lag)

    asyncio.run(scenario())
