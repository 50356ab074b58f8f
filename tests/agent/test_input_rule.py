"""One input rule for every predict path (edge_agent.inputs): ``Agent.predict``, the agent's
``POST /v1/predict`` and ``edgeloop agent predict-batch`` accept the same shaped or flat
records, one or a batch, give the same outputs for them, and refuse the rest with the same
message. Real bundle, real agent, real HTTP on loopback, the real CLI."""

from __future__ import annotations

import http.client
import json
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent import Agent, AgentSettings, Predictor, load_slot
from edge_agent._http import LocalApi
from edge_agent.inputs import as_records, records_error
from edgeloop_cli import main
from tests.fixtures.bundles import BuiltBundle

N = 3
Path_ = Callable[[np.ndarray], np.ndarray]  # records -> outputs, or ValueError(message)


@pytest.fixture(scope="module")
def raw(digits_bundle: BuiltBundle) -> np.ndarray:
    with np.load(digits_bundle.slot_dir / "samples.npz") as npz:
        return np.asarray(npz["self_test"])[:N].astype(np.float32)  # [N, 8, 8]


@pytest.fixture(scope="module")
def agent(digits_bundle: BuiltBundle, tmp_path_factory: pytest.TempPathFactory) -> Agent:
    root = tmp_path_factory.mktemp("agent")
    key = root / "hub.pub"
    key.write_bytes(digits_bundle.public_key)
    settings = AgentSettings(
        device_id="rule-1",
        data_dir=root / "state",
        mqtt_url="mqtt://127.0.0.1:9",  # never connected: the agent is not run
        public_key=key,
    )
    agent = Agent(settings=settings)
    agent.serve(load_slot(digits_bundle.slot_dir))
    return agent


@pytest.fixture(scope="module")
def api(agent: Agent) -> Iterator[LocalApi]:
    server = LocalApi(
        predictor=agent.predictor,
        on_feedback=agent.feedback,
        max_body_bytes=1 << 20,
        status=lambda: {},
    )
    server.start()
    yield server
    server.stop()


def _agent_path(agent: Agent) -> Path_:
    return lambda x: agent.predict(x).outputs


def _http_path(api: LocalApi) -> Path_:
    def predict(x: np.ndarray) -> np.ndarray:
        assert api.port is not None
        conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
        try:
            conn.request("POST", "/v1/predict", body=json.dumps({"inputs": x.tolist()}))
            response = conn.getresponse()
            status, body = response.status, json.loads(response.read())
        finally:
            conn.close()
        if status != 200:
            assert status == 400 and body["code"] == "invalid_input", body
            raise ValueError(body["error"])
        return np.asarray(body["outputs"], dtype=np.float32)

    return predict


def _batch_path(bundle: BuiltBundle, tmp: Path, capsys: pytest.CaptureFixture[str]) -> Path_:
    key = tmp / "hub.pub"
    key.write_bytes(bundle.public_key)

    def predict(x: np.ndarray) -> np.ndarray:
        np.savez(tmp / "in.npz", X=x)
        args = ["agent", "predict-batch", str(bundle.path), str(tmp / "in.npz")]
        code = main([*args, str(tmp / "out.npz"), "--public-key", str(key), "--json"])
        out = json.loads(capsys.readouterr().out)
        if code != 0:
            assert out["code"] == "invalid_input", out
            raise ValueError(out["error"].removeprefix("in.npz: "))
        with np.load(tmp / "out.npz") as npz:
            return np.asarray(npz["outputs"])

    return predict


def _cases(raw: np.ndarray) -> dict[str, tuple[np.ndarray, int | None]]:
    """name -> (input, records it stands for: None when it must be refused)."""
    return {
        "shaped batch [N, 8, 8]": (raw, N),
        "flat batch [N, 64]": (raw.reshape(N, 64), N),
        "one shaped record [8, 8]": (raw[0], 1),
        "one flat record [64]": (raw[0].reshape(64), 1),
        "batch of one flat [1, 64]": (raw[:1].reshape(1, 64), 1),
        "63 values [63]": (raw[0].reshape(64)[:63], None),
        "flat batch of 63 [N, 63]": (raw.reshape(N, 64)[:, :63], None),
        "transposed [8, 8, N]": (np.ascontiguousarray(raw.transpose(1, 2, 0)), None),
        "extra axis [N, 1, 8, 8]": (raw[:, None], None),
        "half records [N, 4, 8]": (raw[:, :4], None),
    }


def test_every_predict_path_follows_one_rule(
    agent: Agent,
    api: LocalApi,
    digits_bundle: BuiltBundle,
    raw: np.ndarray,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = {
        "Agent.predict": _agent_path(agent),
        "POST /v1/predict": _http_path(api),
        "agent predict-batch": _batch_path(digits_bundle, tmp_path, capsys),
    }
    expected = agent.predict(raw).outputs
    model = "digits-mlp@1"
    for case, (x, records) in _cases(raw).items():
        messages = set()
        for name, predict in paths.items():
            if records is None:
                with pytest.raises(ValueError) as refused:
                    predict(x)
                messages.add(str(refused.value))
                continue
            outputs = predict(x)
            np.testing.assert_allclose(
                outputs, expected[:records], rtol=0, atol=1e-6, err_msg=f"{case} via {name}"
            )
        if records is None:  # the same words on every path, naming what is accepted
            assert messages == {records_error(x.shape, (8, 8), model=model)}, (case, messages)


def test_the_rule_is_a_view_and_the_message_says_what_to_send() -> None:
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    shaped = as_records(x, (8, 8), model="m@1")
    assert shaped.shape == (2, 8, 8) and np.shares_memory(shaped, x)
    right = x.reshape(2, 8, 8)
    assert as_records(right, (8, 8), model="m@1") is right  # nothing to do: no work
    assert as_records(x[0], (8, 8), model="m@1").shape == (1, 8, 8)
    assert as_records(x, (64,), model="m@1") is x  # flat models: flat is shaped
    with pytest.raises(ValueError, match="empty batch"):
        as_records(np.zeros((0, 64)), (8, 8), model="m@1")
    message = records_error((63,), (8, 8), model="digits-cnn@3")
    assert message == (
        "digits-cnn@3 expects raw records of shape [8, 8] or 64 flat values in row-major order: "
        "one record ([8, 8] or [64]) or a batch ([N, 8, 8] or [N, 64]); got [63]"
    )
    with pytest.raises(ValueError, match=r"m@1 expects raw records of shape \[64\]: one record"):
        as_records(right, (64,), model="m@1")


def test_a_flat_call_hands_telemetry_its_own_copy(
    digits_bundle: BuiltBundle, raw: np.ndarray
) -> None:
    """The telemetry hand-off keeps the raw records for later: a reshaped view of the
    caller's (reusable) array is copied first, as the caller's own shaped array is."""
    predictor = Predictor(model=load_slot(digits_bundle.slot_dir))
    sink: deque[Any] = deque()
    predictor.set_sink(sink)
    for x in (raw.reshape(N, 64).copy(), raw.copy(), raw[0].reshape(64).copy()):
        predictor.predict(x)
        held = np.frombuffer(sink.pop()[1], dtype=np.float32)  # bytes: a copy by kind
        assert not np.shares_memory(held, x)
        assert held.reshape(-1, 64).tolist() == x.reshape(-1, 64).tolist()
