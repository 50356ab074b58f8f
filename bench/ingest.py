"""Telemetry ingest: the IngestWorker (decode, dedupe, batched commit, ack after commit)
on SQLite and on PostgreSQL against a receive-only paho subscriber counting the same
messages from the same private Mosquitto, over several interleaved rounds in the same run.
Loss (seq gaps) and duplicates must be 0.

Each drain empties a backlog: the windows are published while the (persistent) session is
offline, then the rate at which it empties is measured, so the publisher never shares the
GIL or the CPU with what is measured. A round drains, in an order rotated each round: the
paho baseline, ``mosquitto_sub`` (a C client: the broker's own rate, a second reference), and
the hub worker on each database in each mode (in-thread: receive, decode and store on one
thread; ``decode_process=True``: decode and store in a child process). A database's ratio
is the median over rounds of (worker rate / the paho baseline's rate of the same round), so
a baseline that ran slow or fast once moves one round, not the result.

``hub_cpu_us_per_msg``: the CPU time (user + system, every thread) of the hub's process and
its child processes but the broker while it drains, per stored window (median over rounds);
``*_cpu_us_per_msg`` of the baselines likewise for their process. On a shared, busy machine
the wall-clock rates swing with the neighbours' load, the CPU costs much less
(``runqueue_wait_us_per_msg`` says how long the worker's threads waited for a core)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import func, select

from bench._result import BenchResult
from hub.core.db import make_engine, session_scope
from hub.ingest import IngestWorker, gaps
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import Device, TelemetryWindowRow, create_all
from proto import messages_pb2 as pb
from proto.topics import Topics

DEVICES = 50
WINDOWS = int(os.environ.get("EDGELOOP_BENCH_INGEST_WINDOWS", "20000"))
TARGET = 0.85
CPU_TARGET_US = 50.0
ROUNDS = int(os.environ.get("EDGELOOP_BENCH_INGEST_ROUNDS", "3"))
PG_ADMIN_URL = os.environ.get(
    "EDGELOOP_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    except OSError:  # not Linux, or gone meanwhile
        pass
    return found


def _cpu_seconds(*, exclude: int | None = None) -> float:
    """This process's CPU seconds plus those of its live descendants but ``exclude``."""
    total, pending = time.process_time(), _children(os.getpid())
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    while pending:
        pid = pending.pop()
        if pid == exclude:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
        pending += _children(pid)
    return total


def _runqueue_wait_seconds(*, exclude: int | None = None) -> float:
    """Seconds this process's threads and its live descendants' (but ``exclude``) spent
    runnable but not running (``/proc/*/task/*/schedstat``): the neighbours' load."""
    total, pending = 0.0, [os.getpid()]
    while pending:
        pid = pending.pop()
        if pid == exclude:
            continue
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
        pending += _children(pid)
    return total


def _payloads(topics: Topics) -> list[tuple[str, bytes]]:
    out = []
    per_device = WINDOWS // DEVICES
    for seq in range(1, per_device + 1):
        for d in range(DEVICES):
            device = f"bench-{d}"
            w = pb.TelemetryWindow(
                device_id=device, seq=seq, model="m", version="1", window_start=seq * 10_000,
                window_end=(seq + 1) * 10_000, count=100, errors=0,
                latency=pb.Histogram(edges=[1, 2, 5, 10, 20], counts=[50, 30, 10, 5, 4, 1]),
                output_counts=[10] * 10,
                confidence=pb.Histogram(edges=[0.5, 0.9], counts=[5, 20, 75]),
                features=[pb.FeatureSketch(name=f"f{i}", index=i, counts=[1] * 11, count=100)
                          for i in range(8)],
            )  # fmt: skip
            out.append((topics.telemetry(device), w.SerializeToString()))
    return out


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _baseline(port: int, topics: Topics, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """Messages per second a paho MQTT 5 subscriber drains (auto-acked QoS 1, counting only),
    and this process's CPU seconds while it drains."""
    done, count = threading.Event(), [0]
    client_id = f"bench-baseline-{topics.fleet}"

    def on_message(_c: object, _u: object, _m: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == len(messages):
            done.set()

    def connect() -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum, props.SessionExpiryInterval = 1024, 3600
        client.on_message = on_message
        client.connect("127.0.0.1", port, clean_start=False, properties=props)
        return client

    client = connect()  # create the persistent session and its subscription, then leave
    client.subscribe(topics.shared("telemetry"), qos=1)
    client.loop(1.0)
    client.disconnect()
    _publish(port, messages)  # queued by the broker for the offline session
    client = connect()
    start, cpu = time.perf_counter(), time.process_time()
    client.loop_start()
    done.wait(120)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    return {"rate": count[0] / elapsed, "cpu": cpu, "received": count[0]}


def _c_client(port: int, topics: Topics, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """The same drain by ``mosquitto_sub`` (libmosquitto, C; MQTT 5, QoS 1, Receive Maximum
    1024, payloads to /dev/null, exits after the last one): the rate the broker itself can
    deliver, and the client's CPU seconds. Its wall time includes starting the process and
    connecting (a few ms)."""
    tool = shutil.which("mosquitto_sub")
    if tool is None:
        return {"rate": float("nan"), "cpu": float("nan"), "received": 0}
    common = [
        tool, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-c", "-x", "3600",
        "-i", f"bench-c-{topics.fleet}", "-q", "1", "-t", topics.wildcard("telemetry"),
        "-D", "connect", "receive-maximum", "1024",
    ]  # fmt: skip
    subprocess.run([*common, "-E"], check=True, capture_output=True, timeout=30)  # the session
    _publish(port, messages)
    start = time.perf_counter()
    child = subprocess.Popen(
        [*common, "-C", str(len(messages)), "-N", "-F", "x"], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    received = 0
    while chunk := child.stdout.read(65536):  # one "x" per message
        received += len(chunk)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rate": received / elapsed,
        "cpu": usage.ru_utime + usage.ru_stime,
        "received": received,
    }


@contextmanager
def _database(kind: str, tmp: Path, name: str) -> Iterator[str]:
    """A fresh, empty database of ``kind`` for one drain (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / name}.db"
        return
    import psycopg

    database = f"edgeloop_bench_{os.getpid()}_{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{database}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _postgres_missing() -> str:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN_URL, connect_timeout=5).close()
    except Exception as exc:  # no driver, no server: the bench runs on SQLite alone
        return f"{type(exc).__name__}: {exc}"
    return ""


def _ingest(
    port: int,
    topics: Topics,
    messages: list[tuple[str, bytes]],
    url: str,
    broker_pid: int | None,
    *,
    decode_process: bool,
) -> dict[str, float]:
    engine = make_engine(url)
    create_all(engine)
    with session_scope(engine) as session:
        for d in range(DEVICES):
            session.add(Device(id=f"bench-{d}"))

    def worker() -> IngestWorker:
        return IngestWorker(
            engine=engine, mqtt_url=f"mqtt://127.0.0.1:{port}", fleet=topics.fleet,
            client_id=f"bench-ingest-{topics.fleet}", decode_process=decode_process,
        )  # fmt: skip

    first = worker()  # create the persistent session and its subscriptions, then leave
    first.start()
    first.stop()
    _publish(port, messages)
    second = worker()
    start, cpu = time.perf_counter(), _cpu_seconds(exclude=broker_pid)
    waited = _runqueue_wait_seconds(exclude=broker_pid)
    second.start()
    deadline = time.monotonic() + 120
    while second.stats().stored + second.stats().duplicates < len(messages):
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds(exclude=broker_pid) - cpu
    waited = _runqueue_wait_seconds(exclude=broker_pid) - waited
    second.stop()
    stats = second.stats()
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(TelemetryWindowRow)).scalar_one()
    report = gaps(engine)
    engine.dispose()
    return {
        "rate": stats.stored / elapsed,
        "cpu": cpu,
        "runqueue_wait": waited,
        "stored": stats.stored,
        "rows": rows,
        "duplicates": stats.duplicates,
        "rejected": stats.rejected_total,
        "batches": stats.batches,
        "lost": sum(g.missing_count for g in report) + (len(messages) - rows),
    }


MODES = {"in_thread": False, "decode_process": True}
DEFAULT_MODE = "in_thread"  # what `hub serve` runs unless EDGELOOP_INGEST_DECODE_PROCESS


def _clean(result: dict[str, float]) -> bool:
    return result["lost"] == 0 and result["duplicates"] == 0 and result["rejected"] == 0


def _us(seconds: float, messages: float) -> float:
    return round(seconds / max(messages, 1) * 1e6, 1)


def _spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median and range of one figure over the rounds."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def run() -> BenchResult:
    missing = _postgres_missing()
    databases = ["sqlite"] + ([] if missing else ["postgresql"])
    drains = ["baseline", "c_client"] + [f"{db}:{mode}" for db in databases for mode in MODES]
    runs: dict[str, list[dict[str, float]]] = {d: [] for d in drains}
    with tempfile.TemporaryDirectory() as tmp:
        broker = EmbeddedBroker(kind="mosquitto", port=0, data_dir=Path(tmp))
        broker.start()
        try:
            for r in range(ROUNDS):
                for drain in drains[r % len(drains) :] + drains[: r % len(drains)]:
                    topics = Topics(fleet=f"bench{r}{drain.replace(':', '').replace('_', '')}")
                    messages = _payloads(topics)
                    if drain == "baseline":
                        runs[drain].append(_baseline(broker.port, topics, messages))
                    elif drain == "c_client":
                        runs[drain].append(_c_client(broker.port, topics, messages))
                    else:
                        db, mode = drain.split(":")
                        with _database(db, Path(tmp), f"{db}{r}{mode}") as url:
                            runs[drain].append(
                                _ingest(
                                    broker.port,
                                    topics,
                                    messages,
                                    url,
                                    broker.pid,
                                    decode_process=MODES[mode],
                                )
                            )
        finally:
            broker.stop()
    base, c_client = runs["baseline"], runs["c_client"]
    per_db: dict[str, dict[str, Any]] = {}
    for db in databases:
        modes: dict[str, dict[str, Any]] = {}
        for mode in MODES:
            rs = runs[f"{db}:{mode}"]
            ratios = [r["rate"] / b["rate"] for r, b in zip(rs, base, strict=True)]
            modes[mode] = {
                "ratio": _spread(ratios),
                "msgs_per_s": _spread([r["rate"] for r in rs], 0),
                "hub_cpu_us_per_msg": _spread([_us(r["cpu"], r["stored"]) for r in rs], 1),
                # what the worker spends beyond receiving: less the paho baseline's CPU per
                # message of the same round (receive, the same paho client, auto-acks)
                "beyond_receive_cpu_us_per_msg": _spread(
                    [
                        _us(r["cpu"], r["stored"]) - _us(b["cpu"], b["received"])
                        for r, b in zip(rs, base, strict=True)
                    ],
                    1,
                ),
                "runqueue_wait_us_per_msg": _spread(
                    [_us(r["runqueue_wait"], r["stored"]) for r in rs], 1
                ),
                "ratios": [round(x, 3) for x in ratios],
                "lost": sum(r["lost"] for r in rs),
                "duplicates": sum(r["duplicates"] for r in rs),
                "rejected": sum(r["rejected"] for r in rs),
                "batches": [r["batches"] for r in rs],
                "clean": all(_clean(r) for r in rs),
            }
        best = max(MODES, key=lambda m: modes[m]["ratio"]["median"])
        rs = runs[f"{db}:{best}"]
        per_db[db] = {
            "headline_mode": best,
            "ratio": modes[best]["ratio"]["median"],
            # the same drains against the C client (the broker's own rate) of the same round
            "c_client_msgs_per_s": statistics.median(c["rate"] for c in c_client),
            "ratio_to_c_client": round(
                statistics.median(r["rate"] / c["rate"] for r, c in zip(rs, c_client, strict=True)),
                3,
            ),
            "hub_cpu_us_per_msg": modes[DEFAULT_MODE]["hub_cpu_us_per_msg"]["median"],
            "beyond_receive_cpu_us_per_msg": modes[DEFAULT_MODE]["beyond_receive_cpu_us_per_msg"][
                "median"
            ],
            "lost": sum(m["lost"] for m in modes.values()),
            "duplicates": sum(m["duplicates"] for m in modes.values()),
            **modes,
        }
    for db, d in per_db.items():
        for mode in MODES:
            m = d[mode]
            print(
                f"ingest {db} {mode}: ratio {m['ratio']['median']:.3f} "
                f"({m['ratio']['min']:.3f}-{m['ratio']['max']:.3f} over {ROUNDS} rounds), "
                f"{m['msgs_per_s']['median']:.0f} msg/s, hub CPU "
                f"{m['hub_cpu_us_per_msg']['median']:.1f} us/window "
                f"({m['beyond_receive_cpu_us_per_msg']['median']:.1f} beyond receiving), "
                "waited for a CPU "
                f"{m['runqueue_wait_us_per_msg']['median']:.1f} us/msg; lost {m['lost']:.0f}, "
                f"duplicates {m['duplicates']:.0f}"
                + ("  <- headline" if mode == d["headline_mode"] else "")
            )
    base_rate = _spread([b["rate"] for b in base], 0)
    c_rate = _spread([c["rate"] for c in c_client], 0)
    print(
        f"baseline (paho) {base_rate['median']:.0f} msg/s ({base_rate['min']:.0f}-"
        f"{base_rate['max']:.0f}); mosquitto_sub {c_rate['median']:.0f} msg/s "
        f"({c_rate['min']:.0f}-{c_rate['max']:.0f})"
    )
    details: dict[str, Any] = {  # flat headline figures first (SUMMARY.md shows those)
        "rounds": ROUNDS,
        **{f"{db}_ratio": d["ratio"] for db, d in per_db.items()},
        **{f"{db}_hub_cpu_us_per_msg": d["hub_cpu_us_per_msg"] for db, d in per_db.items()},
        **{
            f"{db}_beyond_receive_cpu_us_per_msg": d["beyond_receive_cpu_us_per_msg"]
            for db, d in per_db.items()
        },
        "baseline_msgs_per_s": base_rate["median"],
        "c_client_msgs_per_s": c_rate["median"],
        "baseline_cpu_us_per_msg": statistics.median(_us(b["cpu"], b["received"]) for b in base),
        "lost": sum(d["lost"] for d in per_db.values()),
        "duplicates": sum(d["duplicates"] for d in per_db.values()),
        "c_client_cpu_us_per_msg": statistics.median(
            _us(c["cpu"], c["received"]) for c in c_client
        ),
        "windows": WINDOWS,
        "hub_cpu_us_per_msg": {db: d["hub_cpu_us_per_msg"] for db, d in per_db.items()},
        "baseline_msgs_per_s_range": base_rate,
        "c_client_msgs_per_s_range": c_rate,
        "devices": DEVICES,
        "postgresql_missing": missing,
        **per_db,
    }
    met = (
        all(
            d["ratio"] >= TARGET
            and d["hub_cpu_us_per_msg"] <= CPU_TARGET_US
            and d[d["headline_mode"]]["clean"]
            and d[DEFAULT_MODE]["clean"]
            for d in per_db.values()
        )
        and not missing
    )
    return BenchResult(
        name="ingest",
        baseline="receive-only paho MQTT 5 subscriber draining the same windows from the same "
        "broker, in the same rounds (median of per-round ratios)",
        ratio=min(d["ratio"] for d in per_db.values()),
        target=f">= {TARGET} on SQLite and PostgreSQL (better of in-thread, decode process), "
        f"hub CPU <= {CPU_TARGET_US:g} us per stored window (in-thread), 0 lost, 0 duplicated",
        met=met,
        details=details,
    )
