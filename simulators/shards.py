"""One scenario's fleet spread over several worker processes (more devices than one
process's CPU or open-file limit allows).

    async with ShardedFleet(processes=4, root=tmp, mqtt_url=broker.url,
                            public_key=key_file, scenario=scenario) as fleet:
        await fleet.deploy(bundle, endpoint=host.endpoint)
        print(await fleet.counters(), fleet.pids)

Worker ``i`` of ``P`` (``multiprocessing`` spawn) runs a :class:`~simulators.fleet.Fleet`
with ``shard=(i, P)``: the devices at positions ``i, i+P, i+2P, ...`` of the scenario's
device list, with the ids, groups, drifts and sensor seeds a single-process fleet gives
them. Each worker runs its own schedule (faults, churn, joins) over its devices; a
``broker_restart`` is skipped (no broker control in a worker), and churn and leave
choices are drawn per worker. The parent talks to each worker over a pipe:
one request, one reply (``("ok", value)`` or ``("error", traceback)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from simulators.bundles import HostedBundle
from simulators.fleet import Fleet
from simulators.scenario import Scenario

# how a worker answers each request; the parent adds the integer ones up
_SUMMED = (
    "devices",
    "connected",
    "serving",
    "predictions",
    "records",
    "predict_errors",
    "labels",
    "restarts",
    "start_failures",
)


@dataclass(frozen=True, kw_only=True)
class _WorkerConfig:
    index: int
    count: int
    root: Path
    mqtt_url: str
    public_key: Path
    scenario: Scenario
    agent_options: dict[str, Any]


class ShardedFleet:
    """See the module docstring. ``fleet.counters()`` etc. are coroutines here (they ask
    every worker); ``pids`` lists the worker processes (for CPU/memory accounting)."""

    def __init__(
        self,
        *,
        processes: int,
        root: Path,
        mqtt_url: str,
        public_key: Path,
        scenario: Scenario,
        agent_options: Mapping[str, Any] | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes={processes}: want at least 1")
        self.scenario = scenario
        self.processes = processes
        self._configs = [
            _WorkerConfig(
                index=i,
                count=processes,
                root=Path(root) / f"shard{i}",
                mqtt_url=mqtt_url,
                public_key=Path(public_key),
                scenario=scenario,
                agent_options=dict(agent_options or {}),
            )
            for i in range(processes)
        ]
        self._start_timeout = start_timeout_s
        self._workers: list[tuple[BaseProcess, Connection]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers if p.pid is not None]

    async def __aenter__(self) -> ShardedFleet:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every worker; returns once each has started its devices."""
        ctx = mp.get_context("spawn")
        for config in self._configs:
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=_worker_main,
                args=(theirs, config),
                name=f"fleet-shard-{config.index}",
                daemon=True,  # never outlives the parent
            )
            process.start()
            theirs.close()
            self._workers.append((process, ours))
        try:
            await asyncio.wait_for(self._replies(), self._start_timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every worker's fleet (a clean shutdown of each agent), then join them."""
        alive = [(p, c) for p, c in self._workers if p.is_alive()]
        for _, conn in alive:
            with contextlib.suppress(OSError):
                conn.send(("stop", {}))
        for process, conn in self._workers:
            if process.is_alive():
                await asyncio.to_thread(process.join, 120)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)
            conn.close()
        self._workers = []

    # fan-out -----------------------------------------------------------------------------

    async def _ask(self, op: str, **args: Any) -> list[Any]:
        for _, conn in self._workers:
            conn.send((op, args))
        return await self._replies()

    async def _replies(self) -> list[Any]:
        results = await asyncio.gather(*(_reply(c) for _, c in self._workers))
        out = []
        for index, (status, value) in enumerate(results):
            if status != "ok":
                raise RuntimeError(f"fleet shard {index} failed:\n{value}")
            out.append(value)
        return out

    async def deploy(
        self,
        bundle: HostedBundle,
        *,
        endpoint: str,
        devices: Iterable[str] | None = None,
        probation_s: int = 0,
    ) -> dict[str, str]:
        """A ``Deploy`` to every started device, or to ``devices`` (each worker publishes
        to its own)."""
        wanted = None if devices is None else sorted(set(devices))
        sent: dict[str, str] = {}
        for part in await self._ask(
            "deploy", bundle=bundle, endpoint=endpoint, devices=wanted, probation_s=probation_s
        ):
            sent |= part
        return sent

    async def counters(self) -> dict[str, int]:
        """``devices`` (running), ``connected``, ``serving``, ``predictions``, ... summed."""
        parts = await self._ask("counters")
        return {key: sum(int(p[key]) for p in parts) for key in _SUMMED}

    async def wait_for(
        self, counter: str, at_least: int, *, within: float, step: float = 0.5
    ) -> int:
        """Poll ``counters()[counter]`` until it reaches ``at_least`` or ``within`` seconds
        pass; returns the last value."""
        deadline = time.monotonic() + within
        value = (await self.counters())[counter]
        while value < at_least and time.monotonic() < deadline:
            await asyncio.sleep(step)
            value = (await self.counters())[counter]
        return value

    async def device_ids(self) -> list[str]:
        return [i for part in await self._ask("device_ids") for i in part]

    async def expected_seqs(self) -> dict[str, dict[str, int]]:
        return _merged(await self._ask("expected_seqs"))

    async def pending(self) -> dict[str, int]:
        return _merged(await self._ask("pending"))

    async def dropped(self) -> dict[str, int]:
        return _merged(await self._ask("dropped"))

    async def quiesce(self) -> None:
        await self._ask("quiesce")

    async def drain(self, *, within: float = 30.0) -> bool:
        return all(await self._ask("drain", within=within))


async def _reply(conn: Connection) -> tuple[str, Any]:
    try:
        status, value = await _receive(conn)
    except (EOFError, OSError) as exc:
        return "error", f"the worker exited ({exc!r} on its pipe)"
    return str(status), value


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out |= part
    return out


async def _receive(conn: Connection) -> Any:
    """The next object on ``conn``, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()  # EOFError: the other end closed


# the worker --------------------------------------------------------------------------------


def _worker_main(conn: Connection, config: _WorkerConfig) -> None:
    asyncio.run(_serve(conn, config))


async def _serve(conn: Connection, config: _WorkerConfig) -> None:
    fleet = Fleet(
        root=config.root,
        mqtt_url=config.mqtt_url,
        public_key=config.public_key,
        scenario=config.scenario,
        agent_options=config.agent_options,
        shard=(config.index, config.count),
    )
    try:
        await fleet.start()
    except Exception:
        conn.send(("error", traceback.format_exc()))
        await fleet.stop()
        return
    conn.send(("ok", len(fleet.devices)))
    try:
        while True:
            try:
                op, args = await _receive(conn)
            except (EOFError, OSError):  # the parent is gone
                break
            if op == "stop":
                break
            try:
                conn.send(("ok", await _answer(fleet, op, args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        await fleet.stop()
        conn.close()


async def _answer(fleet: Fleet, op: str, args: dict[str, Any]) -> Any:
    if op == "deploy":
        wanted = args["devices"]
        return await fleet.deploy(
            args["bundle"],
            endpoint=args["endpoint"],
            devices=None if wanted is None else [i for i in wanted if i in fleet.devices],
            probation_s=args["probation_s"],
        )
    if op == "counters":
        return {**fleet.counters(), "connected": fleet.connected(), "serving": fleet.serving()}
    if op == "device_ids":
        return list(fleet.devices)
    if op == "expected_seqs":
        return fleet.expected_seqs()
    if op == "pending":
        return fleet.pending()
    if op == "dropped":
        return fleet.dropped()
    if op == "quiesce":
        return await fleet.quiesce()
    if op == "drain":
        return await fleet.drain(within=float(args["within"]))
    raise ValueError(f"unknown request {op!r}")
