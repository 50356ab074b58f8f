"""Agent features beyond the deploy loop: probation rollback, shadow, feedback, local API,
batch scoring. Same real broker, gRPC server and bundles as test_agent_loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import Agent
from edgeloop_cli import main
from hub.mqtt.broker import EmbeddedBroker
from proto import messages_pb2 as pb
from tests.agent.harness import Bundles, Observer
from tests.agent.test_agent_loop import DIGITS, _settings, hub  # noqa: F401  (module fixture)

K = pb.EventKind


class BrokenRuntime:
    """Fault injection: the device's runtime starts failing after activation."""

    name = "broken"

    def run(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("accelerator fault")


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_probation_failure_rolls_back_by_itself(
    hub: tuple[Bundles, str],  # noqa: F811
    mosquitto_fresh: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    bundles, endpoint = hub

    async def scenario() -> None:
        settings = _settings(tmp_path, mosquitto_fresh, bundles, probation_s=5.0)
        async with (
            Observer(broker_port=mosquitto_fresh.port).running() as obs,
            Agent(settings=settings) as agent,
        ):
            await obs.online("dev-1")
            first = await obs.deploy(
                "dev-1",
                digest=bundles.v1,
                size=bundles.sizes[bundles.v1],
                endpoint=endpoint,
                probation=0,
            )
            assert (await obs.until_done("dev-1", first))[-1] == K.EVENT_KIND_HEALTHY
            cid = await obs.deploy(
                "dev-1",
                digest=bundles.v2,
                size=bundles.sizes[bundles.v2],
                endpoint=endpoint,
                probation=5,
            )
            await obs.wait(lambda: K.EVENT_KIND_ACTIVATED in obs.kinds("dev-1", cid), within=20)
            serving = agent.predictor.model
            assert serving is not None
            agent.predictor.swap(dataclasses.replace(serving, runtime=BrokenRuntime()))
            for i in range(10):
                with pytest.raises(Exception, match="accelerator fault"):
                    agent.predict(DIGITS[i : i + 1])
            kinds = await obs.until_done("dev-1", cid, within=10)
            assert kinds[-1] == K.EVENT_KIND_ROLLED_BACK and K.EVENT_KIND_HEALTHY not in kinds
            reason = [e.reason for e in obs.events["dev-1"] if e.kind == K.EVENT_KIND_ROLLED_BACK]
            assert "probation failed" in reason[-1]
            active, standby = agent.slots.active(), agent.slots.standby()
            assert active is not None and active.digest == bundles.v1
            assert standby is None or standby.status == "failed"
            assert agent.predict(DIGITS[:1]).outputs.shape == (1, 10)

    asyncio.run(scenario())


def test_shadow_feedback_and_the_local_api(
    hub: tuple[Bundles, str],  # noqa: F811
    mosquitto_fresh: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    bundles, endpoint = hub

    async def scenario() -> None:
        settings = _settings(
            tmp_path, mosquitto_fresh, bundles, http_port=0, telemetry_max_predictions=8
        )
        async with (
            Observer(broker_port=mosquitto_fresh.port).running() as obs,
            Agent(settings=settings) as agent,
        ):
            await obs.online("dev-1")
            cid = await obs.deploy(
                "dev-1", digest=bundles.v1, size=bundles.sizes[bundles.v1], endpoint=endpoint
            )
            assert (await obs.until_done("dev-1", cid))[-1] == K.EVENT_KIND_HEALTHY
            shadow = pb.Command(
                command_id="sh-1",
                device_id="dev-1",
                shadow=pb.Shadow(
                    model="digits-mlp",
                    version="2",
                    bundle_digest=bundles.v2,
                    bundle_size=bundles.sizes[bundles.v2],
                    artifact_endpoint=endpoint,
                    sample_fraction=1.0,
                ),
            )
            await obs.command("dev-1", shadow)
            await obs.wait(lambda: K.EVENT_KIND_ACTIVATED in obs.kinds("dev-1", "sh-1"), within=20)
            port = agent.http_port
            assert port is not None
            answers = [
                await asyncio.to_thread(_post, port, "/v1/predict", {"inputs": DIGITS[i].tolist()})
                for i in range(8)
            ]
            assert all(len(a["ids"]) == 1 for a in answers)
            await asyncio.to_thread(
                _post, port, "/v1/feedback", {"prediction_id": answers[0]["ids"][0], "label": 3}
            )
            agent.flush()
            await obs.wait(lambda: bool(obs.feedback["dev-1"]), within=10)
            label = obs.feedback["dev-1"][0].labels[0]
            assert label.prediction_id == answers[0]["ids"][0] and label.label == 3
            await obs.wait(lambda: bool(obs.telemetry["dev-1"]), within=10)
            window = obs.telemetry["dev-1"][-1]
            assert window.count == 8 and window.shadow.compared == 8
            assert window.shadow.agreed <= window.shadow.compared
            assert len(window.features) == 64 and sum(window.output_counts) == 8

    asyncio.run(scenario())


def test_predict_batch_cli_scores_a_file(hub: tuple[Bundles, str], tmp_path: Path) -> None:  # noqa: F811
    bundles, _ = hub
    bundle = tmp_path / "v1.zip"
    bundle.write_bytes(bundles.raw["v1"])
    inputs, output = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, X=DIGITS[:300])
    code = main(
        [
            "agent",
            "predict-batch",
            str(bundle),
            str(inputs),
            str(output),
            "--public-key",
            str(bundles.public_key_file),
            "--json",
        ]
    )
    assert code == 0
    with np.load(output) as scored:
        assert scored["outputs"].shape == (300, 10)
    tampered = tmp_path / "bad.zip"
    blob = bytearray(bundles.raw["v1"])
    blob[100] ^= 1
    tampered.write_bytes(bytes(blob))
    assert (
        main(
            [
                "agent",
                "predict-batch",
                str(tampered),
                str(inputs),
                str(tmp_path / "x.npz"),
                "--public-key",
                str(bundles.public_key_file),
                "--json",
            ]
        )
        == 1
    )
    assert not (tmp_path / "x.npz").exists()
