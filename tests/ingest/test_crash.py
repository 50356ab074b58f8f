"""Crash safety: a worker killed after receiving but before committing loses nothing.

The messages were never acked, so Mosquitto redelivers them to the same persistent session
when the worker comes back; every window ends up stored exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from hub.core.db import make_engine
from hub.ingest import gaps
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import TelemetryWindowRow, create_all
from tests.ingest import helpers as h

N = 40


def _spawn(
    *, database_url: str, broker: EmbeddedBroker, fleet: str, stats: Path, interval: float
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "hub.ingest",
        "--database-url", database_url,
        "--mqtt-url", broker.url,
        "--fleet", fleet,
        "--client-id", "ingest-crash-test",
        "--batch-size", "1000",
        "--batch-interval-s", str(interval),
        "--stats-file", str(stats),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stats(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def test_sigkill_before_commit_loses_nothing(
    database_url: str, mosquitto_fresh: EmbeddedBroker, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    create_all(engine)
    topics = h.fleet_topics()
    devices = ["c1", "c2"]
    h.register(engine, *devices)
    stats = tmp_path / "stats.json"
    worker = _spawn(
        database_url=database_url,
        broker=mosquitto_fresh,
        fleet=topics.fleet,
        stats=stats,
        interval=3600,
    )
    try:
        h.wait_until(lambda: _stats(stats).get("connected") is True, what="worker connected")
        with h.publisher(mosquitto_fresh.port) as publish:
            for seq in range(1, N // 2 + 1):
                for device in devices:
                    publish(topics.telemetry(device), h.window(device, seq), wait=False)
        h.wait_until(lambda: _stats(stats).get("received") == N, what="all received")
        assert _stats(stats)["pending"] == N  # held, not committed
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    def stored() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(TelemetryWindowRow)).scalar_one()
            )

    assert stored() == 0  # nothing was committed before the crash
    stats.unlink()
    worker = _spawn(
        database_url=database_url,
        broker=mosquitto_fresh,
        fleet=topics.fleet,
        stats=stats,
        interval=0.1,
    )
    try:
        h.wait_until(lambda: _stats(stats).get("stored") == N, what="redelivered windows stored")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, worker.stderr.read().decode() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    final = _stats(stats)
    assert final["stopped"] is True and final["duplicates"] == 0 and final["rejected"] == {}
    assert stored() == N
    assert [(g.device_id, g.max_seq, g.missing) for g in gaps(engine)] == [
        (d, N // 2, []) for d in devices
    ]
    engine.dispose()
