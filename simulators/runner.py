"""One simulation run, start to report: what ``edgeloop sim run`` does.

Starts a private Mosquitto unless a broker URL is given, hosts the bundle (if any) on a
loopback gRPC artifact server and deploys it (bad bundles to the scenario's share of the
fleet), runs the fleet for ``duration_s``, stops the sensors, drains every queue and
tallies what the devices produced against what a counting subscriber received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from proto import messages_pb2 as pb
from simulators.bundles import BundleHost, HostedBundle
from simulators.counting import SEQ_STREAMS, StreamCounter, Tally, stored_seqs, tally
from simulators.fleet import BrokerControl, Credentials, Fleet, wait_until
from simulators.plan import assign_groups, device_ids
from simulators.scenario import Scenario

log = logging.getLogger("edgeloop.sim")

Register = Callable[[str, str, dict[str, str]], None]
# The hub's view: GET /ingest/stats -> {"worker": {...} | None, "streams": [...]}
HubStats = Callable[[], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    scenario: Scenario
    duration_s: float
    root: Path | None = None
    mqtt_url: str | None = None
    bundle: Path | None = None
    public_key: Path | None = None
    signing_key: Any = None  # for 'unhealthy' bad bundles
    credentials: Credentials | None = None
    register: Register | None = None  # called per device (hub registration)
    hub_stats: HubStats | None = None  # with a hub: count lost/duplicated at its ingest too
    agent_options: dict[str, Any] | None = None


@contextlib.asynccontextmanager
async def _broker(url: str | None, root: Path) -> AsyncIterator[tuple[str, BrokerControl | None]]:
    if url is not None:
        yield url, None
        return
    from hub.mqtt.broker import EmbeddedBroker

    broker = EmbeddedBroker(kind="mosquitto", port=0, data_dir=root / "broker")
    await asyncio.to_thread(broker.start)
    try:
        yield broker.url, broker
    finally:
        await asyncio.to_thread(broker.stop)


def _throwaway_key(root: Path) -> Path:
    from model_packager.signing import generate_private_key, public_key_bytes

    path = root / "unused-hub.pub"
    path.write_bytes(public_key_bytes(generate_private_key()).hex().encode())
    return path


async def run_simulation(options: RunOptions) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        root = options.root or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        if options.bundle is not None and options.public_key is None:
            raise ValueError("--bundle needs --public-key (the key the bundle is signed with)")
        public_key = options.public_key or _throwaway_key(root)
        host = stack.enter_context(BundleHost(root=root / "served")) if options.bundle else None
        async with _broker(options.mqtt_url, root) as (url, control):
            return await _run(
                options, root=root, url=url, control=control, host=host, key=public_key
            )
    raise AssertionError("unreachable")  # pragma: no cover


async def _run(
    options: RunOptions,
    *,
    root: Path,
    url: str,
    control: BrokerControl | None,
    host: BundleHost | None,
    key: Path,
) -> dict[str, Any]:
    scenario = options.scenario
    parsed = urlparse(url)
    fleet = Fleet(
        root=root / "fleet",
        mqtt_url=url,
        public_key=key,
        scenario=scenario,
        credentials=options.credentials,
        broker=control,
        agent_options=options.agent_options,
    )
    if options.register is not None:
        # before any device starts: a hub drops (and, with delivery acks, acks) what an
        # unknown device sends, so a late registration would lose the first windows
        total = scenario.fleet.devices + scenario.churn.join
        for device_id, group in zip(
            device_ids(scenario, total), assign_groups(scenario, total), strict=True
        ):
            await asyncio.to_thread(options.register, device_id, group.name, dict(group.tags))
    async with (
        StreamCounter(
            host=parsed.hostname or "127.0.0.1", port=parsed.port or 1883, topics=fleet.topics
        ) as counter,
        fleet,
    ):
        ids = list(fleet.devices)
        started = [i for i in ids if i not in fleet.late]
        online = await wait_until(lambda: counter.online_count(started) == len(started), within=60)
        fleet.record("online", devices=counter.online_count(started), all=online)
        if host is not None and options.bundle is not None:
            await _deploy(fleet, host, options)
        await asyncio.sleep(max(0.0, options.duration_s - fleet.elapsed()))
        await fleet.quiesce()
        drained = await fleet.drain(within=30)
        expected = fleet.expected_seqs()
        sent = sum(sum(s.values()) for s in expected.values())
        await wait_until(lambda: counter.total >= sent, within=10)
        result = tally(
            expected=expected,
            received=counter.received,
            pending=fleet.pending(),
            dropped=fleet.dropped(),
        )
        counters = fleet.counters()
        serving, connected = fleet.serving(), fleet.connected()
        at_hub = await _hub_tally(options.hub_stats, fleet) if options.hub_stats else None
    kinds = Counter(
        pb.EventKind.Name(e.kind).removeprefix("EVENT_KIND_").lower()
        for events in counter.events.values()
        for e in events
    )
    return {
        "scenario": scenario.name,
        "devices": len(fleet.devices),
        "connected_at_end": connected,
        "serving_at_end": serving,
        "duration_s": round(fleet.elapsed(), 3),
        "messages_sent": result.sent,
        "messages_received": result.received,
        "messages_lost": result.lost,
        "messages_duplicated": result.duplicated,
        "messages_pending": result.pending,
        "messages_dropped_on_device": result.dropped_on_device,
        "drained": drained,
        "by_stream": result.by_stream,
        "deployment_events": dict(sorted(kinds.items())),
        **{k: v for k, v in counters.items() if k != "devices"},
        "events": fleet.timeline,
        **({"hub": at_hub} if at_hub is not None else {}),
    }


async def _hub_tally(hub_stats: HubStats, fleet: Fleet) -> dict[str, Any]:
    """Lost and duplicated as the hub's ingest saw them (telemetry and feedback: what it
    stores): waits up to 30 s for the hub to store what the devices delivered."""
    expected = fleet.expected_seqs()
    pending, dropped = fleet.pending(), fleet.dropped()
    ours = set(expected)

    def read() -> tuple[Tally, dict[str, Any]]:
        stats = hub_stats()
        rows = [r for r in stats.get("streams", []) if r.get("device_id") in ours]
        result = tally(
            expected=expected,
            received=stored_seqs(rows),
            pending=pending,
            dropped=dropped,
            streams_checked=SEQ_STREAMS,
        )
        return result, stats

    result, stats = await asyncio.to_thread(read)
    for _ in range(30):
        if result.lost == 0:
            break
        await asyncio.sleep(1.0)
        result, stats = await asyncio.to_thread(read)
    worker = stats.get("worker") or {}
    return {
        "messages_sent": result.sent,
        "messages_stored": result.received,
        "messages_lost": result.lost,
        # the hub stores each (device, stream, seq) once; redeliveries it discarded:
        "duplicates_discarded": worker.get("duplicates"),
        "by_stream": result.by_stream,
    }


async def _deploy(fleet: Fleet, host: BundleHost, options: RunOptions) -> HostedBundle:
    assert options.bundle is not None
    good = host.add(options.bundle)
    spec = options.scenario.bad_bundles
    bad = None
    if spec.fraction > 0:
        bad = host.bad(good, kind=spec.kind, signing_key=options.signing_key)
    await fleet.deploy_scenario(good, endpoint=host.endpoint, bad=bad)
    return good
