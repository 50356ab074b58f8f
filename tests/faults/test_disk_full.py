"""Fault: the disk under the agent's data dir is really full (a 4 MiB tmpfs, filled up after
the first deploy) while the broker is away. Needs root (``mount``); skipped otherwise.

Expected: the agent keeps serving predictions and keeps running; once there is space and a
broker again, telemetry flows, and the loss is reported: a window that closes but cannot be
queued is counted (``Agent.unqueued_windows``) into the next queued window's
``dropped_windows``; feedback labels accepted meanwhile are kept and sent (issue #22).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from tests.agent.harness import Observer
from tests.faults._telemetry import DIGITS, agent_settings, serve_v1
from tests.faults._world import FaultHub, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Write until the file system says it is full."""
    with (folder / "filler.bin").open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()


def test_full_disk_keeps_the_agent_serving(
    fault_hub: FaultHub, mosquitto_fresh: EmbeddedBroker, small_disk: Path
) -> None:
    settings = agent_settings(
        device_id="df-1", broker=mosquitto_fresh, hub=fault_hub, tmp=small_disk
    )
    agent = Agent(settings=settings)

    async def scenario() -> None:
        async with Observer(broker_port=mosquitto_fresh.port).running() as obs:
            await serve_v1(obs, agent, fault_hub)
            mosquitto_fresh.stop()
            _fill(small_disk)
            for i in range(200):  # ~40 windows onto a full disk
                prediction = agent.predict(DIGITS[i % 100 : i % 100 + 1])
                assert prediction.version
                if i < 5:
                    labelled.extend(prediction.ids)
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.3)
            for i, prediction_id in enumerate(labelled):  # accepted while the disk is full
                agent.feedback(prediction_id=prediction_id, label=i % 10)
            for _ in range(2):  # the 2nd reaches the feedback batch (no window is open)
                with contextlib.suppress(OSError, sqlite3.Error):
                    agent.flush()
            assert not agent._feedback.empty()  # not dropped: kept for the next batch
            (small_disk / "filler.bin").unlink()  # space again
            mosquitto_fresh.start()
            agent.predict(DIGITS[:1])
            agent.flush()
            await asyncio.to_thread(
                wait_for, lambda: len(agent.queue) == 0, within=30, what="the queue drains"
            )
            await obs.wait(lambda: bool(obs.telemetry["df-1"]), within=10)
            await obs.wait(lambda: bool(obs.feedback["df-1"]), within=10)
            windows.extend(obs.telemetry["df-1"])
            labels.extend(x.prediction_id for f in obs.feedback["df-1"] for x in f.labels)

    windows: list[pb.TelemetryWindow] = []
    labelled: list[str] = []
    labels: list[str] = []

    async def main() -> None:
        async with agent:
            await scenario()

    asyncio.run(main())
    seqs = [w.seq for w in windows]
    assert seqs == list(range(1, len(seqs) + 1))  # telemetry flows again, numbered on
    # the windows closed while the disk was full are lost, but the loss is reported: the
    # first window queued afterwards carries their number in dropped_windows
    assert sum(w.dropped_windows for w in windows) > 0, seqs
    assert agent.unqueued_windows == 0
    # labels the agent accepted while its disk was full are sent once there is space again
    assert labels == labelled
