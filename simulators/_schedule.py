"""The schedule a :class:`~simulators.fleet.Fleet` runs from its start: the scenario's
faults (disconnect, partition, broker restart), drift onsets, churn, leaves and late joins,
each recorded in the fleet's ``timeline``. Private to :mod:`simulators.fleet` (it reads the
fleet's private state: broker control, rng, last default deployment), which
re-exports :func:`wait_until`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from simulators.scenario import FaultSpec

if TYPE_CHECKING:
    from simulators.fleet import Fleet

log = logging.getLogger("edgeloop.sim.fleet")


async def wait_until(condition: Callable[[], bool], *, within: float, step: float = 0.1) -> bool:
    """Poll ``condition`` until true or ``within`` seconds pass; returns whether it held."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def run_schedule(fleet: Fleet) -> None:
    """Run every scheduled job at its time from the fleet's start (churn on its interval);
    cancelling this cancels the jobs still running."""
    sc = fleet.scenario
    jobs: list[tuple[float, Callable[[], Coroutine[Any, Any, None]]]] = []
    jobs += [(f.at_s, functools.partial(_fault, fleet, f)) for f in sc.faults]
    jobs += [(d.start_s, functools.partial(_drift_started, fleet, d.kind)) for d in sc.drift]
    if sc.churn.leave_fraction:
        jobs.append((sc.churn.leave_at_s, functools.partial(_leave, fleet)))
    if fleet.late:
        jobs.append((sc.churn.join_at_s, functools.partial(_join, fleet)))
    running: list[asyncio.Task[Any]] = []
    if sc.churn.interval_s:
        running.append(asyncio.create_task(_churn(fleet)))
    try:
        for at, job in sorted(jobs, key=lambda j: j[0]):
            await asyncio.sleep(max(0.0, at - fleet.elapsed()))
            running.append(asyncio.create_task(job()))
        await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _drift_started(fleet: Fleet, kind: str) -> None:
    drifted = [d.device_id for d in fleet.devices.values() if d.drifted]
    fleet.record("drift", drift=kind, devices=len(drifted))


async def _fault(fleet: Fleet, fault: FaultSpec) -> None:
    if fault.kind == "broker_restart":
        broker = fleet._broker
        if broker is None:
            fleet.record("fault_skipped", fault=fault.kind, reason="no broker control")
            return
        fleet.record("broker_down")
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(fault.duration_s)
        await asyncio.to_thread(broker.start)
        fleet.record("broker_up")
        return
    proxy = fleet.proxies[str(fault.group)]
    if fault.kind == "disconnect":
        fleet.record("disconnect", group=fault.group, cut=proxy.disconnect())
        return
    fleet.record("partition", group=fault.group, cut=proxy.partition())
    await asyncio.sleep(fault.duration_s)
    proxy.heal()
    fleet.record("heal", group=fault.group)


async def _churn(fleet: Fleet) -> None:
    churn = fleet.scenario.churn
    while True:
        await asyncio.sleep(churn.interval_s)
        up = [d for d in fleet.devices.values() if d.running and not d.left]
        take = max(1, round(churn.fraction * len(up))) if up else 0
        chosen = [up[i] for i in fleet._rng.permutation(len(up))[:take].tolist()]
        fleet.record("churn", devices=[d.device_id for d in chosen])
        results = await asyncio.gather(
            *(d.restart(down_s=churn.down_s) for d in chosen), return_exceptions=True
        )
        for device, result in zip(chosen, results, strict=True):
            if isinstance(result, Exception):
                log.error("restarting %s failed: %s", device.device_id, result)


async def _leave(fleet: Fleet) -> None:
    up = [d for d in fleet.devices.values() if d.running]
    take = round(fleet.scenario.churn.leave_fraction * len(up))
    leaving = [up[i] for i in fleet._rng.permutation(len(up))[:take].tolist()]
    for device in leaving:
        device.left = True
    await asyncio.gather(*(d.stop() for d in leaving), return_exceptions=True)
    fleet.record("leave", devices=[d.device_id for d in leaving])


async def _join(fleet: Fleet) -> None:
    joining = [fleet.devices[i] for i in fleet.late]
    await fleet._start_devices(joining)
    fleet.record("join", devices=[d.device_id for d in joining])
    if fleet._deployed is not None:
        await wait_until(lambda: all(d.connected for d in joining), within=30)
        bundle, endpoint = fleet._deployed
        await fleet.deploy(bundle, endpoint=endpoint, devices=[d.device_id for d in joining])
