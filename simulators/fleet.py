"""A fleet of real edge agents on one machine, driven by a scenario.

    async with Fleet(size=20, root=tmp, mqtt_url=broker.url, public_key=key_file,
                     scenario=scenario) as fleet:
        await fleet.deploy(bundle, endpoint=host.endpoint)
        await asyncio.sleep(30)
        await fleet.drain()
        produced = fleet.expected_seqs()     # device -> stream -> last seq

Everything runs in the caller's asyncio loop: no thread per device. Each device has its own
identity (device id, MQTT session, optional username/password), its own disk state under
``root/devices/<id>`` (slots, queue) and a sensor stream; identical bundles share one
runtime session (``edge_agent._runtime``). Devices in a ``flaky`` group reach the broker
through a :class:`~simulators.netfaults.FaultProxy`; the scenario's faults, churn, joins
and leaves run on a schedule from the fleet's start (``simulators._schedule``), and each is
recorded in ``timeline``; deploy commands go out through ``simulators._deploy``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiomqtt
import numpy as np

from edge_agent.settings import AgentSettings
from proto.topics import Topics
from simulators._deploy import DEPLOY_CHUNK, Credentials, control_client, publish_commands
from simulators._schedule import BrokerControl, run_schedule, wait_until
from simulators.bundles import HostedBundle, deploy_command
from simulators.device import SimDevice
from simulators.netfaults import FaultProxy
from simulators.plan import (
    assign_drifts,
    assign_groups,
    device_ids,
    held_out_classes,
    prefer_for,
)
from simulators.scenario import Scenario
from simulators.sensors import DataSource, Drift, SensorStream

__all__ = ["DEPLOY_CHUNK", "BrokerControl", "Credentials", "Fleet", "wait_until"]

log = logging.getLogger("edgeloop.sim.fleet")


class Fleet:
    """See the module docstring."""

    def __init__(
        self,
        *,
        root: Path,
        mqtt_url: str,
        public_key: Path,
        scenario: Scenario | None = None,
        size: int | None = None,
        source: DataSource | None = None,
        credentials: Credentials | None = None,
        broker: BrokerControl | None = None,
        agent_options: Mapping[str, Any] | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.scenario = scenario or Scenario()
        if size is not None:
            self.scenario = self.scenario.with_devices(size)
        self.root = Path(root)
        self.mqtt_url = mqtt_url
        self.public_key = Path(public_key)
        self.topics = Topics(prefix="edgeloop/v1", fleet=self.scenario.fleet.name)
        self._credentials = credentials
        self._broker = broker
        self._options = dict(agent_options or {})
        self._source = source
        # (index, count): build only the devices whose position % count == index; ids,
        # groups, drifts and sensor seeds stay those of the whole fleet (simulators.shards)
        self.shard = shard or (0, 1)
        if not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard {shard}: want (index, count) with 0 <= index < count")
        self._rng = np.random.default_rng(self.scenario.seed)
        self.devices: dict[str, SimDevice] = {}
        self.late: list[str] = []  # devices that join during the run
        self.proxies: dict[str, FaultProxy] = {}
        self.timeline: list[dict[str, Any]] = []
        self.start_failures = 0
        self._t0 = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._deployed: tuple[HostedBundle, str] | None = None

    # lifecycle ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def record(self, kind: str, **details: Any) -> None:
        self.timeline.append({"at_s": round(self.elapsed(), 3), "kind": kind, **details})

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()
        await self._start_proxies()
        self._build_devices()
        initial = [d for d in self.devices.values() if d.device_id not in self.late]
        await self._start_devices(initial)
        # thousands of agents are millions of long-lived objects: without this every
        # full collection walks them all (a few ms each, many times a second under load)
        gc.collect()
        gc.freeze()
        self.record("started", devices=len(initial))
        schedule = run_schedule(self, broker=self._broker, rng=self._rng, join=self._join_late)
        self._tasks = [asyncio.create_task(schedule)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(d.stop() for d in self.devices.values() if d.running), return_exceptions=True
        )
        for proxy in self.proxies.values():
            await proxy.close()
        self.record("stopped")

    async def _start_proxies(self) -> None:
        parsed = urlparse(self.mqtt_url)
        upstream = (parsed.hostname or "127.0.0.1", parsed.port or 1883)
        for group in self.scenario.groups:
            if group.network == "flaky":
                proxy = FaultProxy(upstream=upstream)
                await proxy.start()
                self.proxies[group.name] = proxy

    def _build_devices(self) -> None:
        sc = self.scenario
        source = self._source or DataSource.load(sc.data.source)
        total = sc.fleet.devices + sc.churn.join
        ids = device_ids(sc, total)
        groups = assign_groups(sc, total)
        drifts = assign_drifts(sc, groups, self._rng)
        held_out = held_out_classes(sc)
        mine, count = self.shard
        for index, (device_id, group, drift) in enumerate(zip(ids, groups, drifts, strict=True)):
            if index % count != mine:
                continue
            rng = np.random.default_rng([sc.seed, index])
            stream = SensorStream(
                source=source, rng=rng, drifts=[Drift(spec=d) for d in drift], held_out=held_out
            )
            self.devices[device_id] = SimDevice(
                settings=self._settings(device_id, group.name),
                group=group,
                stream=stream,
                rate_hz=sc.data.rate_hz,
                batch=sc.data.batch,
                feedback=sc.feedback,
                elapsed=self.elapsed,
                rng=rng,
                drifted=bool(drift),
            )
        self.late = [i for i in ids[sc.fleet.devices :] if i in self.devices]

    def _settings(self, device_id: str, group_name: str) -> AgentSettings:
        fleet = self.scenario.fleet
        group = next((g for g in self.scenario.groups if g.name == group_name), None)
        proxy = self.proxies.get(group_name)
        values: dict[str, Any] = {
            "device_id": device_id,
            "data_dir": self.root / "devices",
            "mqtt_url": proxy.url if proxy is not None else self.mqtt_url,
            "public_key": self.public_key,
            "fleet": fleet.name,
            "telemetry_window_s": fleet.telemetry_window_s,
            "telemetry_tick_s": fleet.telemetry_tick_s,
            "keepalive_s": fleet.keepalive_s,
            "mqtt_protocol": fleet.mqtt_protocol,
            "reconnect_initial_s": 0.5,
            "reconnect_max_s": 5.0,
            "capabilities": {"group": group_name, **(group.tags if group else {})},
        }
        if group is not None:
            values["prefer"] = prefer_for(group)
        creds = self._credentials(device_id) if self._credentials else None
        if creds is not None:
            values["mqtt_username"], values["mqtt_password"] = creds
        return AgentSettings(**(values | self._options))

    async def _join_late(self) -> None:
        """Start the late joiners (the schedule calls this at the churn's ``join_at_s``),
        then give them the last default deployment."""
        joining = [self.devices[i] for i in self.late]
        await self._start_devices(joining)
        self.record("join", devices=[d.device_id for d in joining])
        if self._deployed is not None:
            await wait_until(lambda: all(d.connected for d in joining), within=30)
            bundle, endpoint = self._deployed
            await self.deploy(bundle, endpoint=endpoint, devices=[d.device_id for d in joining])

    async def _start_devices(self, devices: Iterable[SimDevice]) -> None:
        stagger = self.scenario.fleet.stagger_s

        async def one(device: SimDevice) -> None:
            try:
                await device.start()
            except Exception:  # one device that cannot start never stops the fleet
                self.start_failures += 1
                log.exception("device %s did not start", device.device_id)

        starts = []
        for device in devices:
            starts.append(asyncio.create_task(one(device)))
            if stagger:
                await asyncio.sleep(stagger)
        await asyncio.gather(*starts)

    # commands -----------------------------------------------------------------------------

    def _control(self) -> aiomqtt.Client:
        return control_client(self.mqtt_url, self._credentials)

    async def deploy(
        self,
        bundle: HostedBundle,
        *,
        endpoint: str,
        devices: Iterable[str] | None = None,
        probation_s: int = 0,
    ) -> dict[str, str]:
        """Publish a ``Deploy`` to each device (by default every device that has started;
        late joiners get the last default deployment when they join) like the hub does;
        returns device -> command id."""
        if devices is None:
            self._deployed = (bundle, endpoint)
            targets = [i for i in self.devices if i not in self.late]
        else:
            targets = list(devices)
        commands = [
            (i, deploy_command(i, bundle=bundle, endpoint=endpoint, probation_s=probation_s))
            for i in targets
        ]
        async with self._control() as client:
            sent = await publish_commands(client, self.topics, commands)
        self.record("deploy", digest=bundle.digest, devices=len(sent))
        return sent

    async def deploy_scenario(
        self, good: HostedBundle, *, endpoint: str, bad: HostedBundle | None = None
    ) -> dict[str, str]:
        """The good bundle to every device, except ``bad_bundles.fraction`` of them get ``bad``."""
        self._deployed = (good, endpoint)
        ids = [i for i in self.devices if i not in self.late]
        take = round(self.scenario.bad_bundles.fraction * len(ids)) if bad else 0
        chosen = set(self._rng.permutation(ids)[:take].tolist())
        sent = await self.deploy(
            good, endpoint=endpoint, devices=[i for i in ids if i not in chosen]
        )
        if bad is not None and chosen:
            sent |= await self.deploy(bad, endpoint=endpoint, devices=sorted(chosen))
        return sent

    def assignments(self) -> dict[str, str]:
        """Device id -> group name, as :meth:`start` will build them (known before it, so a
        caller can enrol each device with its group's token first)."""
        sc = self.scenario
        total = sc.fleet.devices + sc.churn.join
        return {
            i: g.name for i, g in zip(device_ids(sc, total), assign_groups(sc, total), strict=True)
        }

    def begin_drift(self) -> float:
        """Start every device's scenario drifts now, whatever their ``start_s``; returns the
        fleet time of the onset (a demo starts drift once its rollout is done)."""
        at = self.elapsed()
        for device in self.devices.values():
            device.stream.drifts = [
                Drift(spec=d.spec.model_copy(update={"start_s": at})) for d in device.stream.drifts
            ]
        self.record("drift", devices=sum(1 for d in self.devices.values() if d.drifted))
        return at

    # what the devices produced ----------------------------------------------------------------

    def expected_seqs(self) -> dict[str, dict[str, int]]:
        """Per device and stream, the last sequence number produced (1..n were produced)."""
        return {d.device_id: d.last_seqs() for d in self.devices.values()}

    def pending(self) -> dict[str, int]:
        return {d.device_id: d.pending() for d in self.devices.values() if d.running}

    def dropped(self) -> dict[str, int]:
        return {d.device_id: d.dropped() for d in self.devices.values()}

    def counters(self) -> dict[str, int]:
        devices = self.devices.values()
        return {
            "devices": sum(1 for d in devices if d.running),
            "predictions": sum(d.counters.predictions for d in devices),
            "records": sum(d.counters.records for d in devices),
            "predict_errors": sum(d.counters.predict_errors for d in devices),
            "labels": sum(d.counters.labels for d in devices),
            "restarts": sum(d.counters.restarts for d in devices),
            "start_failures": self.start_failures,
        }

    def connected(self) -> int:
        return sum(1 for d in self.devices.values() if d.connected)

    def serving(self) -> int:
        return sum(1 for d in self.devices.values() if d.serving)

    async def quiesce(self) -> None:
        """Stop every sensor, and wait until the labels already scheduled are handed over."""
        for device in self.devices.values():
            device.paused = True
        await asyncio.sleep(self.scenario.feedback.delay_s + 0.05)

    async def drain(self, *, within: float = 30.0) -> bool:
        """Close every open window and label batch, then wait until all queues are empty."""
        for device in self.devices.values():
            if device.agent is not None:
                device.agent.flush()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not any(self.pending().values()):
                return True
            await asyncio.sleep(0.2)
        return False

    # the schedule -----------------------------------------------------------------------------

    async def restart(self, device_id: str, *, down_s: float = 0.0) -> None:
        self.record("restart", device=device_id)
        await self.devices[device_id].restart(down_s=down_s)
