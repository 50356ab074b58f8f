"""A small fleet of real agents on real Mosquitto: deploy, predict, drift, feedback, churn,
a network partition, and the lost/duplicated tally."""

from __future__ import annotations

import asyncio
import gc
import uuid
from pathlib import Path

import numpy as np

from edge_agent._runtime import shared_runtime_count
from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from proto.topics import Topics
from simulators.counting import StreamCounter, tally
from simulators.fleet import Fleet, wait_until
from simulators.scenario import parse_scenario
from tests.simulators.conftest import SimHub

K = pb.EventKind
FAST = {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, "probation_s": 0.0}


def _scenario(name: str) -> str:
    return f"""
name = "small"
seed = 3
[fleet]
devices = 20
name = "{name}"
stagger_s = 0.0
telemetry_window_s = 0.5
telemetry_tick_s = 0.1
[[groups]]
name = "steady"
fraction = 0.5
[[groups]]
name = "flaky"
fraction = 0.5
network = "flaky"
runtime = "tflite"
[data]
rate_hz = 25
[[drift]]
kind = "noise"
intensity = 0.6
fraction = 0.5
group = "steady"
[feedback]
coverage = 0.5
delay_s = 0.1
"""


def _distance(windows: list[pb.TelemetryWindow], reference: dict[int, np.ndarray]) -> float:
    """Mean total-variation distance of a device's feature sketches from the reference."""
    mine = _pooled(windows)
    dists = []
    for index, counts in mine.items():
        p, q = counts / max(counts.sum(), 1), reference[index] / max(reference[index].sum(), 1)
        dists.append(0.5 * float(np.abs(p - q).sum()))
    return float(np.mean(dists))


def _pooled(windows: list[pb.TelemetryWindow]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for window in windows:
        for sketch in window.features:
            counts = np.asarray(sketch.counts, dtype=np.float64)
            out[sketch.index] = out.get(sketch.index, 0) + counts
    return out


def test_a_small_fleet_end_to_end(
    sim_hub: SimHub, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    fleet_name = f"t{uuid.uuid4().hex[:8]}"
    scenario = parse_scenario(_scenario(fleet_name))
    gc.collect()  # runtimes of earlier tests' agents that only garbage cycles still hold
    earlier = shared_runtime_count()

    async def run() -> None:
        async with (
            StreamCounter(
                host="127.0.0.1",
                port=mosquitto.port,
                topics=Topics(prefix="edgeloop/v1", fleet=fleet_name),
                keep_windows=True,
            ) as counter,
            Fleet(
                root=tmp_path / "fleet",
                mqtt_url=mosquitto.url,
                public_key=sim_hub.public_key_file,
                scenario=scenario,
                agent_options=FAST,
            ) as fleet,
        ):
            ids = list(fleet.devices)
            assert len(ids) == 20 and len(fleet.proxies) == 1
            assert await wait_until(lambda: counter.online_count(ids) == 20, within=30)
            await fleet.deploy_scenario(sim_hub.good, endpoint=sim_hub.host.endpoint)
            healthy = lambda: all(  # noqa: E731
                counter.last_event_kinds().get(i) == K.EVENT_KIND_HEALTHY for i in ids
            )
            assert await wait_until(healthy, within=60), counter.last_event_kinds()
            assert await wait_until(lambda: fleet.serving() == 20, within=10)
            # identical bundles share one runtime session in this process (one per variant)
            assert shared_runtime_count() - earlier <= 2
            await asyncio.sleep(1.5)

            # a partition of the flaky group: its devices keep predicting and queueing
            proxy = fleet.proxies["flaky"]
            flaky = [d for d in fleet.devices.values() if d.group.name == "flaky"]
            assert proxy.partition() >= 10
            assert await wait_until(lambda: not any(d.connected for d in flaky), within=10)
            await asyncio.sleep(1.5)
            assert sum(d.pending() for d in flaky) > 0  # windows waiting for the network
            proxy.heal()
            assert await wait_until(lambda: all(d.connected for d in flaky), within=20)

            # churn: a restarted device resumes its sequence numbers on the same disk
            churned = fleet.devices[ids[0]]
            before = churned.last_seqs()["telemetry"]
            await fleet.restart(ids[0])
            assert churned.counters.restarts == 1 and churned.serving
            await wait_until(lambda: churned.last_seqs()["telemetry"] > before + 1, within=10)

            await fleet.quiesce()
            assert await fleet.drain(within=30)
            expected = fleet.expected_seqs()
            sent = sum(sum(s.values()) for s in expected.values())
            await wait_until(lambda: counter.total >= sent, within=15)
            result = tally(
                expected=expected,
                received=counter.received,
                pending=fleet.pending(),
                dropped=fleet.dropped(),
            )
            assert result.lost == 0, result
            assert result.by_stream["telemetry"]["sent"] >= 20 * 3

            seqs = counter.received[(ids[0], "telemetry")]
            assert sorted(seqs) == list(range(1, expected[ids[0]]["telemetry"] + 1))

            # drift on the chosen half of the steady group: their sketches moved
            steady = [d for d in fleet.devices.values() if d.group.name == "steady"]
            drifted = [d.device_id for d in steady if d.drifted]
            clean = [d.device_id for d in steady if not d.drifted]
            assert len(drifted) == 5 and len(clean) == 5
            reference = _pooled([w for i in clean for w in counter.windows[i]])
            far = [_distance(counter.windows[i], reference) for i in drifted]
            near = [_distance(counter.windows[i], reference) for i in clean]
            assert min(far) > 2 * max(near), (far, near)

            # feedback: about half the records were labelled, and every label arrived
            counts = fleet.counters()
            assert 0.35 < counts["labels"] / counts["records"] < 0.65, counts
            assert sum(counter.labels.values()) == counts["labels"]
            assert counts["predict_errors"] == 0

    asyncio.run(run())
