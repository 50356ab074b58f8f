"""Rollout: time for a phased rollout (``10%,100%``, no bake time, no command rate limit, the hub's
default 100 concurrent downloads) to reach
100% healthy on a simulated fleet, against a lower bound measured in the same run.

Hub side in its own process (``bench._rollout_hub``: the gRPC ``ArtifactService`` plus the
rollout controller and the ingest, on SQLite); a private Mosquitto; a
:class:`simulators.fleet.Fleet` of ``EDGELOOP_ROLLOUT_DEVICES`` (default 1000) real agents in
``EDGELOOP_ROLLOUT_PROCESSES`` worker processes (a :class:`simulators.shards.ShardedFleet`,
default: one per core), their state on ``/dev/shm``. Lower bound = bundle bytes x devices / loopback
gRPC transfer rate (the bundle downloaded repeatedly from the same server, one after the
other and 32 at once; the faster rate is used) + devices x one MQTT publish -> receive round
trip (QoS 1, median of 200). Ratio = rollout time / lower bound; target <= 2.

A second figure, reported beside the ratio and never in its place: the same bound with the
devices' own deploy CPU in it. The fleet processes' CPU time during the rollout, less what
it burns at rest (telemetry, keepalives: measured over a quiet window just before), is
the deploy work of ``n`` agents; ``lower_bound_with_device_cpu_s`` = max(lower bound,
that CPU time / the machine's cores). ``hub_cpu_s`` is the hub process's CPU time over the
rollout. Together they say where the time goes on a machine that simulates every device.

A third, the hub's cost per device (issue #20: <= 1 CPU-ms): ``hub_cpu_ms_per_device`` =
(the hub process's CPU over the rollout, less its CPU at rest over the same quiet window:
the telemetry ingest) / devices; ``hub_cpu_met`` checks it against ``HUB_CPU_TARGET_MS``.
``controller_cpu_ms_per_device``: the controller's ticks' thread time over the hub
process's whole life (idle ticks before and after included), per device.

By component (:data:`COMPONENTS`, the hub process's threads, read from
``/proc/<pid>/task/*/stat`` and named by the thread map ``bench._rollout_hub`` writes):
``hub_cpu_ms_per_device_by_component`` = each component's CPU over the rollout less its
own CPU at rest over the quiet window, per device (``_gross``: without that subtraction;
``hub_idle_cpu_s_per_s_by_component``: the rates at rest). ``rollout_work_cpu_ms_per_device``
= controller + command publisher + ingest (commands, events, gates: issue #20's 1 CPU-ms,
``rollout_work_cpu_met``), the ingest's share less the telemetry of devices that started
serving (``ingest_events_cpu_ms_per_device``: telemetry windows stored over the rollout x
the ingest's CPU per window over a window after it, all serving); the artifact server's
bytes are reported apart as ``transfer_cpu_ms_per_MB`` (its CPU / the downloads it served
over the rollout x bundle bytes). ``EDGELOOP_ROLLOUT_PROFILE=DIR``: cProfile (thread CPU
time) of every thread of the hub process, one ``.pstats`` per thread.

``EDGELOOP_ROLLOUT_DEADLINE_S`` (default 240) bounds the rollout for larger fleets; the
hub admits downloads by its artifact server's slots (``--capacity-endpoint``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import grpc.aio
from sqlalchemy import text

from bench._result import BenchResult
from edge_agent._session import no_delay
from hub.core.db import make_engine, session_scope
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import Device
from proto import services_pb2, services_pb2_grpc
from simulators.plan import device_ids
from simulators.scenario import Scenario, parse_scenario
from simulators.shards import ShardedFleet

TARGET = 2.0
#: Issue #20: the hub's own work per device deployed (commands, events, gates), CPU-ms.
HUB_CPU_TARGET_MS = 1.0
#: What issue #20's 1 CPU-ms per device covers: commands, events, gates.
ROLLOUT_WORK = ("controller", "command_publisher", "ingest")
TRANSFERS = 48
RTTS = 200
FLEET = "rollbench"
# The hub's default: 900 downloads at once through one process's gRPC client stalled
# behind the artifact server's 16 threads (60 s read timeouts, retries).
MAX_DOWNLOADS = 100
DEADLINE_S = float(os.environ.get("EDGELOOP_ROLLOUT_DEADLINE_S", "240"))  # larger fleets
TELEMETRY_WINDOW_S = 5
GRACE_S = 10.0


def _devices() -> int:
    return int(os.environ.get("EDGELOOP_ROLLOUT_DEVICES", "1000"))


def _processes() -> int:
    """Fleet worker processes: one per core unless ``EDGELOOP_ROLLOUT_PROCESSES`` says."""
    return max(int(os.environ.get("EDGELOOP_ROLLOUT_PROCESSES", os.cpu_count() or 1)), 1)


# lower bound --------------------------------------------------------------------------------


async def _download(stub: services_pb2_grpc.ArtifactServiceStub, digest: str, size: int) -> None:
    hasher, received = hashlib.sha256(), 0
    request = services_pb2.DownloadRequest(digest=digest, offset=0, chunk_size=1 << 20)
    async for chunk in stub.Download(request):
        hasher.update(chunk.data)
        received += len(chunk.data)
    if received != size or "sha256:" + hasher.hexdigest() != digest:
        raise RuntimeError("the bundle did not arrive intact")


async def transfer_rate(endpoint: str, digest: str, size: int) -> dict[str, float]:
    """Bytes per second of repeated whole-bundle downloads (sequential and 32 concurrent)."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = services_pb2_grpc.ArtifactServiceStub(channel)
        await _download(stub, digest, size)  # connect, warm up
        start = time.perf_counter()
        for _ in range(TRANSFERS):
            await _download(stub, digest, size)
        sequential = TRANSFERS * size / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(TRANSFERS // 16):
            await asyncio.gather(*(_download(stub, digest, size) for _ in range(32)))
        concurrent = (TRANSFERS // 16) * 32 * size / (time.perf_counter() - start)
    return {"sequential_Bps": sequential, "concurrent_Bps": concurrent}


async def mqtt_round_trip(port: int) -> float:
    """Median seconds from a QoS 1 publish to its delivery back to a subscriber."""
    topic = f"bench/rtt/{uuid.uuid4().hex}"
    times = []
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"rtt-{uuid.uuid4().hex[:8]}") as c:
        no_delay(c)  # as the agents do; with Nagle on, a round trip here is ~40 ms
        await c.subscribe(topic, qos=1)
        messages = c.messages.__aiter__()
        for i in range(RTTS):
            start = time.perf_counter()
            await c.publish(topic, str(i).encode(), qos=1)
            message = await asyncio.wait_for(messages.__anext__(), 10)
            assert message.payload == str(i).encode()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# the hub side -------------------------------------------------------------------------------


async def capacity(endpoint: str) -> services_pb2.DownloadCapacity:
    """The artifact server's download slots and counts (``served``: streams ended)."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = services_pb2_grpc.ArtifactServiceStub(channel)
        return await stub.Capacity(services_pb2.CapacityRequest(), timeout=10)


def _rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Per component: CPU seconds between two samples, divided by ``seconds``."""
    return {k: (after[k] - before[k]) / seconds for k in after}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The hub process's components, by its threads' Python names (from the thread map the
#: process writes) or, for threads of gRPC's C core, their OS names; first match wins.
#: ``rest``: every other thread (the main thread, the thread map, threads that ended).
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("controller", ("rollout-controller",)),  # ticks: events -> states, phases, gates
    ("command_publisher", ("paho-mqtt-client-edgeloop-rollouts-",)),  # commands' MQTT I/O
    ("ingest", ("ingest-",)),  # deploy events, states, telemetry into the database
    # bundle bytes: the server's handler threads, its completion-queue poller, gRPC's C core
    ("artifact_server", ("edgeloop-grpc", "(_serve)", "grpc", "event_engine", "lifeguard")),
)


def _component(name: str) -> str:
    for component, prefixes in COMPONENTS:
        if any(name.startswith(p) or p in name for p in prefixes):
            return component
    return "rest"


def _thread_cpu_s(pid: int, names_file: Path) -> dict[str, float]:
    """CPU seconds per component of process ``pid`` (``/proc/<pid>/task/*/stat``) and
    ``total`` (the process's, with threads that ended); ``rest`` = total - the others."""
    try:
        names: dict[str, str] = json.loads(names_file.read_text())
    except (OSError, ValueError):
        names = {}
    tick = os.sysconf("SC_CLK_TCK")
    out = {c: 0.0 for c, _ in COMPONENTS}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm, fields = task.joinpath("stat").read_text().split("(", 1)[1].rsplit(")", 1)
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        component = _component(names.get(task.name, comm))
        if component != "rest":
            values = fields.split()
            out[component] += (int(values[11]) + int(values[12])) / tick
    total = _cpu_s(pid)
    out["rest"] = total - sum(out.values())
    out["total"] = total
    return out


@contextlib.contextmanager
def _hub(root: Path, *, database_url: str, mqtt_url: str) -> Iterator[tuple[str, int]]:
    port_file = root / "grpc.port"
    log = (root / "hub.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "bench._rollout_hub",
        "--store",
        str(root / "artifacts"),
        "--port-file",
        str(port_file),
        "--threads-file",
        str(root / "threads.json"),
        "--",
        "--database-url",
        database_url,
        "--mqtt-url",
        mqtt_url,
        "--fleet",
        FLEET,
        "--tick-s",
        "0.2",
        "--max-commands-per-s",
        "100000",
        "--max-concurrent-downloads",
        str(MAX_DOWNLOADS),
        "--stats-file",
        str(root / "controller.json"),
    ]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hub process did not start; see {root / 'hub.log'}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text()}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _scenario(n: int) -> Scenario:
    return parse_scenario(
        f"""
        name = "rollout-bench"
        [fleet]
        devices = {n}
        name = "{FLEET}"
        stagger_s = 0.002
        telemetry_window_s = {TELEMETRY_WINDOW_S}
        keepalive_s = 120
        [data]
        rate_hz = 0.5
        """
    )


def _healthy_reported(engine: Any, rollout_id: str) -> int:
    """Devices whose HEALTHY event for this rollout the hub has ingested."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(DISTINCT device_id) FROM deployment_event"
                    " WHERE rollout_id = :id AND kind = 'healthy'"
                ),
                {"id": rollout_id},
            ).scalar_one()
        )


def _windows(engine: Any) -> int:
    """Telemetry windows the hub has stored so far."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM telemetry_window")).scalar_one())


def _progress(engine: Any, rollout_id: str) -> tuple[str, dict[str, int]]:
    with engine.connect() as conn:
        state = conn.execute(
            text("SELECT state FROM rollout WHERE id = :id"), {"id": rollout_id}
        ).scalar_one()
        rows = conn.execute(
            text(
                "SELECT state, count(*) FROM rollout_device WHERE rollout_id = :id GROUP BY state"
            ),
            {"id": rollout_id},
        ).all()
    return str(state), {str(s): int(c) for s, c in rows}


def _create_rollout(engine: Any, *, digest: str, size: int) -> str:
    from hub.rollouts import service

    with session_scope(engine) as s:
        rollout = service.create_rollout(
            s,
            model="digits-mlp",
            version="1",
            bundle_digest=digest,
            bundle_size=size,
            selector="all",
            phases="10%,100%",
            bake_s=0,
            probation_s=0,
            device_timeout_s=600,
            max_commands_per_s=100000,
            max_concurrent_downloads=MAX_DOWNLOADS,
        )
        return str(rollout.id)


async def _measure(root: Path, state: Path, n: int, processes: int) -> dict[str, Any]:
    from bench.scale import _build_bundle

    raw, key = await asyncio.to_thread(_build_bundle, root)
    digest, size = "sha256:" + hashlib.sha256(raw).hexdigest(), len(raw)
    database_url = f"sqlite:///{root / 'hub.db'}"
    engine = make_engine(database_url)
    scenario = _scenario(n)
    threads = root / "threads.json"  # the hub process's thread names (bench._rollout_hub)
    with session_scope(engine) as s:
        for device_id in device_ids(scenario, n):
            s.add(Device(id=device_id, group="default", tags={}))
    broker = EmbeddedBroker(kind="mosquitto", port=0, data_dir=root / "broker")
    broker.start()
    try:
        with _hub(root, database_url=database_url, mqtt_url=broker.url) as (endpoint, hub_pid):
            rates = await transfer_rate(endpoint, digest, size)
            rtt = await mqtt_round_trip(broker.port)
            rate = max(rates.values())
            bound = size * n / rate + n * rtt
            async with ShardedFleet(
                processes=processes,
                root=state,
                mqtt_url=broker.url,
                public_key=key,
                scenario=scenario,
            ) as fleet:

                def fleet_cpu_s() -> float:
                    return time.process_time() + sum(_cpu_s(pid) for pid in fleet.pids)

                connect_s = max(120.0, n / 25)  # 10,000 agents on 2 cores take minutes
                if await fleet.wait_for("connected", n, within=connect_s) < n:
                    raise RuntimeError(f"not all {n} simulated devices connected in {connect_s} s")
                # retained states reach the hub, the first telemetry windows close
                await asyncio.sleep(1.0 + TELEMETRY_WINDOW_S)
                quiet, quiet_cpu, quiet_hub = time.perf_counter(), fleet_cpu_s(), _cpu_s(hub_pid)
                quiet_parts = _thread_cpu_s(hub_pid, threads)
                # CPU at rest (telemetry, keepalives, their ingest) over a whole window
                await asyncio.sleep(TELEMETRY_WINDOW_S + 1.0)
                quiet_s = time.perf_counter() - quiet
                idle_cpu_per_s = (fleet_cpu_s() - quiet_cpu) / quiet_s
                hub_idle_per_s = (_cpu_s(hub_pid) - quiet_hub) / quiet_s
                parts_idle_per_s = _rates(quiet_parts, _thread_cpu_s(hub_pid, threads), quiet_s)
                served0 = (await capacity(endpoint)).served
                started, fleet_cpu0 = time.perf_counter(), fleet_cpu_s()
                hub_cpu0, parts0 = _cpu_s(hub_pid), _thread_cpu_s(hub_pid, threads)
                windows0 = await asyncio.to_thread(_windows, engine)
                rollout_id = await asyncio.to_thread(
                    _create_rollout, engine, digest=digest, size=size
                )
                serving_s = reported_s = None
                status, states = "running", dict[str, int]()
                while (now := time.perf_counter() - started) < DEADLINE_S:
                    if serving_s is None and (await fleet.counters())["serving"] >= n:
                        serving_s = now
                    status, states = await asyncio.to_thread(_progress, engine, rollout_id)
                    if states.get("healthy", 0) >= n or status not in {"running", "shadowing"}:
                        break
                    if reported_s is None:
                        if await asyncio.to_thread(_healthy_reported, engine, rollout_id) >= n:
                            reported_s = now
                    elif now - reported_s > GRACE_S:
                        break  # every device said healthy; the controller has not caught up
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                fleet_cpu = fleet_cpu_s() - fleet_cpu0
                hub_cpu = _cpu_s(hub_pid) - hub_cpu0
                parts_end = _thread_cpu_s(hub_pid, threads)
                parts = _rates(parts0, parts_end, 1.0)
                windows1 = await asyncio.to_thread(_windows, engine)
                served = (await capacity(endpoint)).served - served0
                # every row healthy; the rollout itself completes once the last phase's
                # gates have been evaluated (reported, not part of the ratio)
                finished_s = None if status in {"running", "shadowing"} else elapsed
                while finished_s is None and time.perf_counter() - started < elapsed + GRACE_S:
                    await asyncio.sleep(0.05)
                    status, _ = await asyncio.to_thread(_progress, engine, rollout_id)
                    if status not in {"running", "shadowing"}:
                        finished_s = time.perf_counter() - started
                # the ingest's cost of a telemetry window: devices that start serving during
                # the rollout send telemetry, which is no deploy work (none at rest before:
                # no device serves a model yet); measured over a window with all serving
                post, parts_post0 = time.perf_counter(), _thread_cpu_s(hub_pid, threads)
                windows2 = await asyncio.to_thread(_windows, engine)
                await asyncio.sleep(TELEMETRY_WINDOW_S + 1.0)
                post_s = time.perf_counter() - post
                post_ingest = _thread_cpu_s(hub_pid, threads)["ingest"] - parts_post0["ingest"]
                post_windows = await asyncio.to_thread(_windows, engine) - windows2
    finally:
        broker.stop()
        engine.dispose()
    stats = root / "controller.json"  # written by the hub process as it stopped
    health = json.loads(stats.read_text()) if stats.exists() else {}
    controller_cpu = health.get("tick_cpu_s")
    cores = os.cpu_count() or 1
    deploy_cpu = max(fleet_cpu - idle_cpu_per_s * elapsed, 0.0)  # the agents' deploy work
    hub_deploy_cpu = max(hub_cpu - hub_idle_per_s * elapsed, 0.0)  # the hub's rollout work
    with_cpu = max(bound, deploy_cpu / cores)
    # each component's CPU over the rollout less its own CPU at rest, per device
    net = {k: max(v - parts_idle_per_s[k] * elapsed, 0.0) for k, v in parts.items()}
    per_device = {k: round(1000 * v / n, 3) for k, v in net.items() if k != "total"}
    # the telemetry windows stored over the rollout, at the ingest's cost per window
    per_window = (
        max(post_ingest - parts_idle_per_s["ingest"] * post_s, 0.0) / post_windows
        if post_windows > 0
        else 0.0
    )
    telemetry = min(per_window * (windows1 - windows0), net["ingest"])
    net_events = {**net, "ingest": net["ingest"] - telemetry}  # deploy events and states
    work = sum(net_events[k] for k in ROLLOUT_WORK)
    transfer_mb = served * size / 1e6
    return {
        "devices": n,
        "fleet_processes": processes,
        "bundle_bytes": size,
        "transfer_MBps_sequential": round(rates["sequential_Bps"] / 1e6, 1),
        "transfer_MBps_concurrent": round(rates["concurrent_Bps"] / 1e6, 1),
        "mqtt_rtt_ms": round(rtt * 1000, 3),
        "lower_bound_s": round(bound, 3),
        "lower_bound_transfer_s": round(size * n / rate, 3),
        "lower_bound_rtt_s": round(n * rtt, 3),
        "rollout_s": round(elapsed, 2),
        "healthy_events_ingested_s": round(reported_s, 2) if reported_s is not None else None,
        "agents_serving_s": round(serving_s, 2) if serving_s is not None else None,
        "ms_per_device": round(1000 * elapsed / n, 2),
        "rollout_state": status,
        "rollout_finished_s": round(finished_s, 2) if finished_s is not None else None,
        "device_states": states,
        "completed": states.get("healthy", 0) >= n,
        # where the time goes (not part of the ratio; see the module docstring)
        "cores": cores,
        "hub_cpu_s": round(hub_cpu, 2),
        "hub_idle_cpu_s_per_s": round(hub_idle_per_s, 3),
        # the hub process's CPU over the rollout less its CPU at rest (the telemetry
        # ingest) per device: commands, events, gates, bundle serving
        "hub_cpu_ms_per_device": round(1000 * hub_deploy_cpu / n, 3),
        "hub_cpu_ms_per_device_gross": round(1000 * hub_cpu / n, 3),
        "hub_cpu_target_ms": HUB_CPU_TARGET_MS,
        # of which the rollout controller's ticks (commands, events to states, gates)
        "controller_cpu_s": controller_cpu,
        "controller_cpu_ms_per_device": (
            round(1000 * controller_cpu / n, 3) if controller_cpu is not None else None
        ),
        "hub_cpu_met": 1000 * hub_deploy_cpu / n <= HUB_CPU_TARGET_MS,
        # the controller's ticks over the hub process's life, and the rollout reconciles it
        # skipped (nothing new since one that changed nothing)
        "controller_ticks": health.get("ticks"),
        "controller_reconciles_skipped": health.get("reconciles_skipped"),
        # the same split by component (threads of the hub process; docs/ROLLOUTS.md)
        "hub_cpu_ms_per_device_by_component": per_device,
        "hub_cpu_ms_per_device_by_component_gross": {
            k: round(1000 * v / n, 3) for k, v in parts.items() if k != "total"
        },
        "hub_idle_cpu_s_per_s_by_component": {
            k: round(v, 4) for k, v in parts_idle_per_s.items() if k != "total"
        },
        # of the ingest's: the telemetry of devices that started serving (windows stored
        # over the rollout x the ingest's CPU per window measured after it); the rest is
        # the deploy events and states
        "telemetry_windows_in_rollout": windows1 - windows0,
        "ingest_cpu_ms_per_telemetry_window": round(1000 * per_window, 3),
        "ingest_events_cpu_ms_per_device": round(1000 * net_events["ingest"] / n, 3),
        # issue #20's 1 CPU-ms: commands, events, gates (controller + publisher + the
        # ingest's deploy events and states)
        "rollout_work_cpu_ms_per_device": round(1000 * work / n, 3),
        "rollout_work_cpu_met": 1000 * work / n <= HUB_CPU_TARGET_MS,
        # bytes: the artifact server's CPU per MB it streamed (streams ended x bundle bytes)
        "downloads_served": served,
        "transfer_cpu_ms_per_MB": (
            round(1000 * net["artifact_server"] / transfer_mb, 3) if transfer_mb else None
        ),
        "fleet_cpu_s": round(fleet_cpu, 2),
        "fleet_idle_cpu_s_per_s": round(idle_cpu_per_s, 3),
        "device_cpu_ms_per_deploy": round(1000 * deploy_cpu / n, 2),
        "lower_bound_with_device_cpu_s": round(with_cpu, 3),
    }


def _measured_s(details: dict[str, Any]) -> float:
    """The rollout's own time when it completed; else when the hub had every device's
    HEALTHY event (the controller lagging behind its events is reported, not hidden)."""
    if details["completed"] or details["healthy_events_ingested_s"] is None:
        return float(details["rollout_s"])
    return float(details["healthy_events_ingested_s"])


def run() -> BenchResult:
    n = _devices()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tempfile.mkdtemp(dir=shm or tmp, prefix="edgeloop-rollout-"))
        try:
            details = asyncio.run(_measure(Path(tmp), state, n, _processes()))
        finally:
            shutil.rmtree(state, ignore_errors=True)
    ratio = _measured_s(details) / details["lower_bound_s"]
    details["ratio_with_device_cpu"] = round(
        _measured_s(details) / details["lower_bound_with_device_cpu_s"], 2
    )
    return BenchResult(
        name="rollout",
        baseline="bundle bytes x devices / loopback gRPC rate + devices x MQTT round trip",
        ratio=round(ratio, 2),
        target=f"<= {TARGET:g} (rollout to 100% healthy vs the lower bound)",
        met=bool(details["completed"]) and ratio <= TARGET,
        details=details,
    )
