"""Scale: how many simulated devices (real agents) this machine holds with telemetry
flowing, and their CPU, memory and file descriptors per device.

The fleet is a :class:`~simulators.shards.ShardedFleet`: ``EDGELOOP_SCALE_PROCESSES``
worker processes (default: enough that each holds <= 2,500 devices; one process's
20,000-file limit caps it near 4,500 agents) over one scenario, each device predicting
``EDGELOOP_SCALE_RATE_HZ`` times a second (default 1) and sending a telemetry window every
10 s, after a deploy in waves of ``EDGELOOP_SCALE_DEPLOY_WAVE`` devices (default 1,000, as a
rollout bounds concurrent downloads). CPU, RSS and fds are summed over the worker processes
(``/proc``; RSS includes each worker's interpreter and runtime); the counting subscriber
runs in this process and is reported apart (``counter_cpu_share``), as is the broker.

Baseline, same run: bare aiomqtt clients (one process, this one) holding the same number of
connections and publishing one QoS 1 message per telemetry window each. Ratio: CPU per
agent / CPU per bare client. Target: the fleet holds 1,000 devices (>= 95% serving, >= 90%
of the expected telemetry windows arriving). Sizes: ``EDGELOOP_SCALE_SIZES`` (default
``1000``; e.g. ``2000,5000,10000``); the run stops at the first size that does not hold.
Device state lives on ``/dev/shm`` when it exists (the agents' SQLite queues fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from bench._result import BenchResult
from hub.mqtt.broker import EmbeddedBroker
from proto.topics import Topics
from simulators.bundles import BundleHost, HostedBundle
from simulators.counting import StreamCounter
from simulators.fleet import wait_until
from simulators.scenario import parse_scenario
from simulators.shards import ShardedFleet

WINDOW_S = 10.0
MEASURE_S = 20.0
TARGET = 1000
PER_PROCESS = 2500


def _sizes() -> list[int]:
    return [int(s) for s in os.environ.get("EDGELOOP_SCALE_SIZES", "1000").split(",")]


def _processes(n: int) -> int:
    fixed = os.environ.get("EDGELOOP_SCALE_PROCESSES")
    return int(fixed) if fixed else max(1, math.ceil(n / PER_PROCESS))


def _rate_hz() -> float:
    return float(os.environ.get("EDGELOOP_SCALE_RATE_HZ", "1"))


def _raise_fd_limit() -> int:
    """The soft open-file limit up to the hard one (workers inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _build_bundle(root: Path) -> tuple[bytes, Path]:
    from hub.core.artifacts import FileArtifactStore
    from hub.core.db import make_engine, session_scope
    from hub.datasets import service as datasets
    from hub.packaging.service import PackageOptions, package
    from hub.tables import create_all
    from hub.training.service import train
    from model_packager.signing import generate_private_key, public_key_bytes

    engine = make_engine(f"sqlite:///{root / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=root / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    train(engine, store, spec_name="digits-mlp", dataset="digits@1", params={"epochs": 2})
    key = generate_private_key()
    options = PackageOptions(formats=("onnx",), formats_explicit=True)
    outcome = package(engine, store, ref="digits-mlp@1", signing_key=key, options=options)
    engine.dispose()
    key_file = root / "hub.pub"
    key_file.write_bytes(public_key_bytes(key).hex().encode())
    return outcome.path.read_bytes(), key_file


def _rss(pid: int | str = "self") -> int:
    """Resident memory in bytes (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class _PidMeter:
    """CPU share (CPU seconds per wall second) of some processes since it was made."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cpu, self.wall = self._cpu(), time.monotonic()

    def _cpu(self) -> float:
        return sum(_cpu_s(p) for p in self.pids)

    def cpu_share(self) -> float:
        return (self._cpu() - self.cpu) / max(time.monotonic() - self.wall, 1e-9)


class _Meter:
    """This process's CPU share (CPU seconds per wall second) since it was made."""

    def __init__(self) -> None:
        self.cpu, self.wall = self._cpu(), time.monotonic()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def cpu_share(self) -> float:
        return (self._cpu() - self.cpu) / max(time.monotonic() - self.wall, 1e-9)


async def _bare(n: int, port: int) -> dict[str, float]:
    """n bare clients, each publishing one QoS 1 message per window."""
    base_rss, base_fds = _rss(), _fds()
    stop = asyncio.Event()
    connected = 0

    async def client(i: int) -> None:
        nonlocal connected
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"bare-{i}", keepalive=60) as c:
            connected += 1
            await asyncio.sleep(WINDOW_S * (i / n))
            while not stop.is_set():
                await c.publish(f"bench/bare/{i}", b"x" * 600, qos=1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WINDOW_S)

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(client(i)))
        await asyncio.sleep(0.001)
    await wait_until(lambda: connected == n, within=60)
    meter = _Meter()
    await asyncio.sleep(MEASURE_S)
    cpu = meter.cpu_share()
    rss, fds = _rss() - base_rss, _fds() - base_fds
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "connected": connected,
        "cpu_share": round(cpu, 3),
        "cpu_ms_per_device_s": round(1000 * cpu / n, 4),
        "rss_kib_per_device": round(rss / n / 1024, 1),
        "fds_per_device": round(fds / n, 2),
    }


def _telemetry(counter: StreamCounter) -> int:
    return sum(
        sum(c.values()) for (_, stream), c in counter.received.items() if stream == "telemetry"
    )


async def _deploy_in_waves(
    fleet: ShardedFleet, ids: list[str], good: HostedBundle, *, endpoint: str
) -> None:
    """The bundle to every device, ``EDGELOOP_SCALE_DEPLOY_WAVE`` devices at a time (default
    1,000), each wave serving (or 120 s passed) before the next: the bounded concurrency a
    hub rollout has (10,000 agents downloading at once from one artifact server time out)."""
    wave = int(os.environ.get("EDGELOOP_SCALE_DEPLOY_WAVE", "1000"))
    for start in range(0, len(ids), wave):
        await fleet.deploy(good, endpoint=endpoint, devices=ids[start : start + wave])
        done = min(start + wave, len(ids))
        await fleet.wait_for("serving", done, within=max(120.0, wave * 0.03), step=0.5)


async def _fleet(
    n: int, broker: EmbeddedBroker, host: BundleHost, good: HostedBundle, key: Path, root: Path
) -> Any:
    rate, processes = _rate_hz(), _processes(n)
    scenario = parse_scenario(
        f"""
        name = "scale"
        [fleet]
        devices = {n}
        name = "scale{n}"
        stagger_s = 0.002
        telemetry_window_s = {WINDOW_S}
        keepalive_s = 120
        [data]
        rate_hz = {rate}
        """
    )
    topics = Topics(prefix="edgeloop/v1", fleet=f"scale{n}")
    started = time.monotonic()
    async with (
        StreamCounter(host="127.0.0.1", port=broker.port, topics=topics) as counter,
        ShardedFleet(
            processes=processes,
            root=root / f"fleet{n}",
            mqtt_url=broker.url,
            public_key=key,
            scenario=scenario,
        ) as fleet,
    ):
        ids = await fleet.device_ids()
        online = await wait_until(lambda: counter.online_count(ids) == n, within=120)
        start_s = time.monotonic() - started
        await _deploy_in_waves(fleet, ids, good, endpoint=host.endpoint)
        deploy_s = time.monotonic() - started - start_s
        await asyncio.sleep(WINDOW_S)  # the first windows close
        before = _telemetry(counter)
        workers = _PidMeter(fleet.pids)
        here = _Meter()
        mosquitto = _PidMeter([broker.pid]) if broker.pid else None
        await asyncio.sleep(MEASURE_S)
        windows = _telemetry(counter) - before
        cpu, counter_cpu = workers.cpu_share(), here.cpu_share()
        broker_cpu = mosquitto.cpu_share() if mosquitto else 0.0
        rss = sum(_rss(p) for p in fleet.pids)
        fds = sum(_fds(p) for p in fleet.pids)
        broker_rss = _rss(broker.pid) if broker.pid else 0
        expected = n * MEASURE_S / WINDOW_S
        counts = await fleet.counters()
        on_now = counter.online_count(ids)
    serving = counts["serving"]
    return {
        "devices": n,
        "processes": processes,
        "rate_hz": rate,
        "all_online": online,
        "online": on_now,
        "connected": counts["connected"],
        "serving": serving,
        "start_s": round(start_s, 1),
        "deploy_s": round(deploy_s, 1),
        "telemetry_per_s": round(windows / MEASURE_S, 1),
        "telemetry_expected_per_s": round(expected / MEASURE_S, 1),
        "telemetry_ratio": round(windows / expected, 3),
        "predictions": counts["predictions"],
        "cpu_share": round(cpu, 3),
        "cpu_ms_per_device_s": round(1000 * cpu / n, 4),
        "counter_cpu_share": round(counter_cpu, 3),
        "broker_cpu_share": round(broker_cpu, 3),
        "rss_kib_per_device": round(rss / n / 1024, 1),  # with each worker's fixed RSS
        "workers_rss_mib": round(rss / 2**20, 1),
        "fds_per_device": round(fds / n, 2),
        "broker_rss_mib": round(broker_rss / 2**20, 1),
        "held": serving >= 0.95 * n and windows >= 0.9 * expected,
    }


async def _main(root: Path, state: Path) -> dict[str, Any]:
    raw, key = await asyncio.to_thread(_build_bundle, root)
    fd_limit = _raise_fd_limit()  # before the broker starts: it inherits the limit
    broker = EmbeddedBroker(kind="mosquitto", port=0, data_dir=root / "broker")
    broker.start()
    results: dict[str, Any] = {
        "sizes": {},
        "state_dir": str(state),
        "fd_limit": fd_limit,
        "cpus": os.cpu_count(),
    }
    try:
        with BundleHost(root=root / "served") as host:
            good = host.add_bytes(raw)
            for n in _sizes():
                bare = await _bare(n, broker.port)
                fleet = await _fleet(n, broker, host, good, key, state)
                results["sizes"][n] = {"bare": bare, "fleet": fleet}
                print(f"scale {n}: fleet {fleet} | bare {bare}", flush=True)
                if not fleet["held"]:
                    break
    finally:
        broker.stop()
        import shutil

        shutil.rmtree(state, ignore_errors=True)
    return results


def run() -> BenchResult:
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tempfile.mkdtemp(dir=shm or tmp, prefix="edgeloop-scale-"))
        results = asyncio.run(_main(Path(tmp), state))
    sizes = results["sizes"]
    held = [n for n, r in sizes.items() if r["fleet"]["held"]]
    largest = max(held) if held else min(sizes)
    row = sizes[largest]
    ratio = row["fleet"]["cpu_ms_per_device_s"] / max(row["bare"]["cpu_ms_per_device_s"], 1e-9)
    return BenchResult(
        name="scale",
        baseline="bare aiomqtt clients (same connections, one QoS 1 message per window)",
        ratio=round(ratio, 2),
        target=f"holds >= {TARGET} devices with telemetry flowing",
        met=bool(held) and max(held) >= TARGET,
        details={"max_devices_held": max(held) if held else 0, **results},
    )
