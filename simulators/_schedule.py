"""The schedule a :class:`~simulators.fleet.Fleet` runs from its start: the scenario's
faults (disconnect, partition, broker restart), drift onsets, churn, leaves and late joins,
each recorded in the fleet's ``timeline``.

Below :mod:`simulators.fleet`: it declares what it needs of a fleet (:class:`Scheduled`,
:class:`BrokerControl`) and is handed the rest explicitly (the broker control, the fleet's
rng, how late joiners join); :mod:`simulators.fleet` re-exports :func:`wait_until` and
:class:`BrokerControl`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import numpy as np

from simulators.device import SimDevice
from simulators.netfaults import FaultProxy
from simulators.scenario import FaultSpec, Scenario

__all__ = ["BrokerControl", "Scheduled", "run_schedule", "wait_until"]

log = logging.getLogger("edgeloop.sim.fleet")


class BrokerControl(Protocol):
    """What a ``broker_restart`` fault needs (``hub.mqtt.broker.EmbeddedBroker`` has it)."""

    def stop(self) -> None: ...

    def start(self) -> None: ...


class Scheduled(Protocol):
    """What the schedule reads of the fleet it runs on (:class:`~simulators.fleet.Fleet`)."""

    @property
    def scenario(self) -> Scenario: ...

    @property
    def devices(self) -> Mapping[str, SimDevice]: ...

    @property
    def late(self) -> list[str]: ...

    @property
    def proxies(self) -> Mapping[str, FaultProxy]: ...

    def elapsed(self) -> float: ...

    def record(self, kind: str, **details: Any) -> None: ...


async def wait_until(condition: Callable[[], bool], *, within: float, step: float = 0.1) -> bool:
    """Poll ``condition`` until true or ``within`` seconds pass; returns whether it held."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def run_schedule(
    fleet: Scheduled,
    *,
    broker: BrokerControl | None,
    rng: np.random.Generator,
    join: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """Run every scheduled job at its time from the fleet's start (churn on its interval);
    cancelling this cancels the jobs still running. ``broker``: what a broker restart stops
    and starts (None: the fault is skipped); ``rng``: the fleet's, for who churns and who
    leaves; ``join``: starts the fleet's late joiners (at the churn's ``join_at_s``)."""
    sc = fleet.scenario
    jobs: list[tuple[float, Callable[[], Coroutine[Any, Any, None]]]] = []
    jobs += [(f.at_s, functools.partial(_fault, fleet, f, broker)) for f in sc.faults]
    jobs += [(d.start_s, functools.partial(_drift_started, fleet, d.kind)) for d in sc.drift]
    if sc.churn.leave_fraction:
        jobs.append((sc.churn.leave_at_s, functools.partial(_leave, fleet, rng)))
    if fleet.late:
        jobs.append((sc.churn.join_at_s, join))
    running: list[asyncio.Task[Any]] = []
    if sc.churn.interval_s:
        running.append(asyncio.create_task(_churn(fleet, rng)))
    try:
        for at, job in sorted(jobs, key=lambda j: j[0]):
            await asyncio.sleep(max(0.0, at - fleet.elapsed()))
            running.append(asyncio.create_task(job()))
        await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _drift_started(fleet: Scheduled, kind: str) -> None:
    drifted = [d.device_id for d in fleet.devices.values() if d.drifted]
    fleet.record("drift", drift=kind, devices=len(drifted))


async def _fault(fleet: Scheduled, fault: FaultSpec, broker: BrokerControl | None) -> None:
    if fault.kind == "broker_restart":
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


async def _churn(fleet: Scheduled, rng: np.random.Generator) -> None:
    churn = fleet.scenario.churn
    while True:
        await asyncio.sleep(churn.interval_s)
        up = [d for d in fleet.devices.values() if d.running and not d.left]
        take = max(1, round(churn.fraction * len(up))) if up else 0
        chosen = [up[i] for i in rng.permutation(len(up))[:take].tolist()]
        fleet.record("churn", devices=[d.device_id for d in chosen])
        results = await asyncio.gather(
            *(d.restart(down_s=churn.down_s) for d in chosen), return_exceptions=True
        )
        for device, result in zip(chosen, results, strict=True):
            if isinstance(result, Exception):
                log.error("restarting %s failed: %s", device.device_id, result)


async def _leave(fleet: Scheduled, rng: np.random.Generator) -> None:
    up = [d for d in fleet.devices.values() if d.running]
    take = round(fleet.scenario.churn.leave_fraction * len(up))
    leaving = [up[i] for i in rng.permutation(len(up))[:take].tolist()]
    for device in leaving:
        device.left = True
    await asyncio.gather(*(d.stop() for d in leaving), return_exceptions=True)
    fleet.record("leave", devices=[d.device_id for d in leaving])
