"""Feedback labels carry what the device predicted (docs/PROTOCOL.md, ``Label``): from
``Agent.feedback`` and from the loopback HTTP API, on a real broker with a real bundle."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent._recent import RecentPredictions
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.datasets.sources import load_source
from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from tests.agent.harness import Observer
from tests.fixtures.bundles import BuiltBundle

DIGITS = load_source("sklearn:digits").features


def test_recent_predictions_hold_the_newest_and_forget_the_oldest() -> None:
    recent = RecentPredictions(capacity=5)
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0]], np.float32)
    recent.remember(ids=["a", "b", "c"], outputs=logits, model="m", version="1", classes=True)
    got = recent.get("b")
    assert got is not None and (got.label, got.value, got.model, got.version) == (0, None, "m", "1")
    recent.remember(
        ids=["d", "e", "f"],
        outputs=np.array([[0.5], [1.5], [2.5]]),
        model="r",
        version="2",
        classes=False,
    )
    assert len(recent) == 5 and recent.get("a") is None  # the oldest went first
    assert recent.get("c") is not None and recent.get("c").label == 2  # type: ignore[union-attr]
    f = recent.get("f")
    assert f is not None and f.label is None and f.value == 2.5
    # a wide output of a non-classifier (a reconstruction) holds no single prediction
    recent.remember(ids=["g"], outputs=np.ones((1, 4)), model="r", version="2", classes=False)
    assert recent.get("g") is None
    with pytest.raises(ValueError):
        RecentPredictions(capacity=0)


def test_counted_ids_are_held_in_a_ring_of_the_newest() -> None:
    """The predictor's own ids (``prefix + counter``) go to a ring: the last ``capacity``
    counters are held, a late (older) counter never overwrites a newer one."""
    recent = RecentPredictions(capacity=4)
    logits = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0, 2]]
    counters = np.arange(10, 16, dtype=np.int64)
    recent.remember_counted(
        prefix="d-b-", counters=counters, outputs=logits, model="m", version="1", classes=True
    )
    assert len(recent) == 4  # a batch over capacity: its newest
    assert recent.get("d-b-11") is None and recent.get("d-b-12") is not None
    assert [recent.get(f"d-b-{c}").label for c in range(12, 16)] == [2, 1, 0, 2]  # type: ignore[union-attr]
    # a late call with an older counter (10 shares slot 2 with 14): refused
    recent.remember_counted(
        prefix="d-b-",
        counters=np.array([10], np.int64),
        outputs=logits[:1],
        model="m",
        version="1",
        classes=True,
    )
    assert recent.get("d-b-10") is None and recent.get("d-b-14") is not None
    recent.remember_counted(
        prefix="d-b-",
        counters=np.array([16], np.int64),
        outputs=np.array([[2.5]], np.float32),
        model="r",
        version="2",
        classes=False,
    )
    got = recent.get("d-b-16")
    assert got is not None and (got.label, got.value, got.model, got.version) == (
        None,
        2.5,
        "r",
        "2",
    )
    assert recent.get("d-b-12") is None  # slot 0: overwritten by 16
    for other in ("d-b-016", "d-b-x", "e-b-13", "d-b-13x", "d-b-²"):
        assert recent.get(other) is None
    recent.remember(ids=["a"], outputs=logits[:1], model="m", version="1", classes=True)
    assert recent.get("a") is not None and recent.get("d-b-13") is not None


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_feedback_labels_carry_the_predicted_label_model_and_version(
    digits_bundle: BuiltBundle, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    key_file = tmp_path / "hub.pub"
    key_file.write_bytes(digits_bundle.public_key)
    device = f"pred-{uuid.uuid4().hex[:8]}"
    settings = AgentSettings(
        device_id=device,
        data_dir=tmp_path / "agent",
        mqtt_url=mosquitto.url,
        public_key=key_file,
        http_port=0,
        telemetry_tick_s=0.1,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.5,
    )

    async def scenario() -> None:
        async with Observer(broker_port=mosquitto.port).running(client_id=f"obs-{device}") as obs:
            agent = Agent(settings=settings)
            info = agent.slots.install(digits_bundle.path, public_key=digits_bundle.public_key)
            agent.slots.activate(info.name)
            async with agent:
                await obs.online(device)
                batch = agent.predict(DIGITS[:6])  # in-process, a batch
                expected = dict(zip(batch.ids, batch.outputs.argmax(axis=1).tolist(), strict=True))
                port = agent.http_port
                assert port is not None
                answer = await asyncio.to_thread(
                    _post, port, "/v1/predict", {"inputs": DIGITS[7].tolist()}
                )
                expected[answer["ids"][0]] = int(np.argmax(answer["outputs"][0]))
                for pid in batch.ids:  # right after predicting: before any telemetry tick
                    agent.feedback(prediction_id=pid, label=1)
                await asyncio.to_thread(
                    _post, port, "/v1/feedback", {"prediction_id": answer["ids"][0], "label": 2}
                )
                agent.feedback(prediction_id="never-predicted", label=4)
                agent.flush()
                await obs.wait(
                    lambda: sum(len(f.labels) for f in obs.feedback[device]) >= 8, within=15
                )
        labels: dict[str, pb.Label] = {
            lab.prediction_id: lab for f in obs.feedback[device] for lab in f.labels
        }
        version = str(digits_bundle.manifest["version"])
        for pid, predicted in expected.items():
            lab = labels[pid]
            assert lab.HasField("predicted_label") and lab.predicted_label == predicted, pid
            assert (lab.model, lab.version) == ("digits-mlp", version)
        assert labels[answer["ids"][0]].label == 2
        unknown = labels["never-predicted"]
        assert not unknown.HasField("predicted_label") and unknown.label == 4
        assert unknown.model == "digits-mlp"  # the serving model, as before

    asyncio.run(scenario())
