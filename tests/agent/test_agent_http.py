"""The loopback inference endpoint over real HTTP, on a real bundle."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edge_agent import LoadedModel, Predictor, load_slot
from edge_agent._http import LocalApi
from tests.fixtures.bundles import BuiltBundle


class Feedback:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, *, prediction_id: str, label: int | None, value: float | None, source: str = ""
    ) -> None:
        if prediction_id == "unknown":
            raise ValueError("no such prediction")
        call = {"prediction_id": prediction_id, "label": label, "value": value}
        if source:
            call["source"] = source
        self.calls.append(call)


@pytest.fixture(scope="module")
def model(digits_bundle: BuiltBundle) -> LoadedModel:
    return load_slot(digits_bundle.slot_dir)


@pytest.fixture(scope="module")
def raw(digits_bundle: BuiltBundle) -> np.ndarray:
    with np.load(digits_bundle.slot_dir / "samples.npz") as npz:
        return np.asarray(npz["self_test"])


@pytest.fixture
def api(model: LoadedModel) -> Iterator[LocalApi]:
    server = LocalApi(
        predictor=Predictor(model=model, device_id="dev"),
        on_feedback=Feedback(),
        max_body_bytes=64 * 1024,
        status=lambda: {"slot": "a"},
    )
    server.start()
    yield server
    server.stop()


def call(
    api: LocalApi,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw_body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    assert api.port is not None
    conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
    try:
        data = raw_body if raw_body is not None else None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_predict_one_record_and_a_batch(api: LocalApi, model: LoadedModel, raw: np.ndarray) -> None:
    status, one = call(api, "POST", "/v1/predict", {"inputs": raw[0].tolist()})
    assert status == 200
    assert set(one) >= {"ids", "outputs", "labels", "scores", "model", "version", "latency_ms"}
    expected = model.runtime.run(model.preprocess.apply(raw))
    np.testing.assert_allclose(one["outputs"], expected[:1], rtol=1e-6)
    assert one["labels"] == [str(expected[0].argmax())] and one["scores"] is None
    assert (one["model"], one["version"]) == ("digits-mlp", "1")
    status, batch = call(api, "POST", "/v1/predict", {"inputs": raw[:5].tolist()})
    assert status == 200 and len(batch["ids"]) == 5 and len(set(batch["ids"] + one["ids"])) == 6
    assert batch["labels"] == [str(i) for i in expected[:5].argmax(axis=1)]


def test_bad_requests_get_clear_400s(api: LocalApi, raw: np.ndarray) -> None:
    status, body = call(api, "POST", "/v1/predict", raw_body=b"{not json")
    assert (status, body["code"]) == (400, "invalid_json")
    status, body = call(api, "POST", "/v1/predict", {"records": []})
    assert status == 400 and '"inputs"' in body["error"]
    status, body = call(api, "POST", "/v1/predict", {"inputs": raw[0].reshape(64)[:63].tolist()})
    assert status == 400 and "[8, 8] or 64 flat values" in body["error"]
    status, body = call(api, "POST", "/v1/predict", {"inputs": [[1, 2], [3]]})
    assert (status, body["code"]) == (400, "invalid_input")
    status, body = call(api, "POST", "/v1/predict", {"inputs": [["a"] * 8] * 8})
    assert status == 400
    status, body = call(api, "POST", "/v1/predict", {"inputs": [[None] * 8] * 8})
    assert status == 400 and "finite" in body["error"]
    status, body = call(api, "POST", "/v1/predict", {"inputs": np.zeros((400, 8, 8)).tolist()})
    assert (status, body["code"]) == (413, "too_large")  # the test server caps at 64 KiB
    status, body = call(api, "GET", "/v1/nothing")
    assert (status, body["code"]) == (404, "not_found")
    status, body = call(api, "GET", "/v1/predict")
    assert (status, body["code"]) == (405, "method_not_allowed")


def test_feedback_reaches_the_callback(api: LocalApi) -> None:
    feedback = api.on_feedback
    assert isinstance(feedback, Feedback)
    assert call(api, "POST", "/v1/feedback", {"prediction_id": "p-1", "label": "7"})[0] == 202
    assert call(api, "POST", "/v1/feedback", {"prediction_id": "p-2", "label": 3})[0] == 202
    assert call(api, "POST", "/v1/feedback", {"prediction_id": "p-3", "value": 0.5})[0] == 202
    body = {"prediction_id": "p-4", "label": 1, "source": "digits-0042"}
    assert call(api, "POST", "/v1/feedback", body)[0] == 202
    assert feedback.calls == [
        {"prediction_id": "p-1", "label": 7, "value": None},
        {"prediction_id": "p-2", "label": 3, "value": None},
        {"prediction_id": "p-3", "label": None, "value": 0.5},
        {"prediction_id": "p-4", "label": 1, "value": None, "source": "digits-0042"},
    ]
    bad = [
        {"label": 1},
        {"prediction_id": "p", "label": 1, "value": 2.0},
        {"prediction_id": "p"},
        {"prediction_id": "p", "label": "cat"},
        {"prediction_id": "p", "label": 1, "source": 7},
        {"prediction_id": "p", "label": 1, "source": "x" * 129},
        {"prediction_id": "p", "value": "high"},
        {"prediction_id": "unknown", "label": 1},
    ]
    for body in bad:
        status, answer = call(api, "POST", "/v1/feedback", body)
        assert status == 400, (body, answer)
    assert len(feedback.calls) == 4


def test_health_and_503_without_a_model(api: LocalApi, raw: np.ndarray) -> None:
    status, health = call(api, "GET", "/v1/health")
    assert status == 200
    assert health["status"] == "ok" and health["model"] == "digits-mlp"
    assert health["version"] == "1" and health["variant"] == "model.int8.onnx"
    assert health["slot"] == "a" and health["errors"] == 0
    model = api.predictor.swap(None)
    try:
        status, health = call(api, "GET", "/v1/health")
        assert (status, health["status"], health["model"]) == (503, "no_model", None)
        status, body = call(api, "POST", "/v1/predict", {"inputs": raw[0].tolist()})
        assert (status, body["code"]) == (503, "no_model")
    finally:
        api.predictor.swap(model)


def test_binds_to_loopback_only_unless_told(model: LoadedModel) -> None:
    predictor = Predictor(model=model)
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(ValueError, match="loopback"):
            LocalApi(predictor=predictor, on_feedback=None, host=host)
    LocalApi(predictor=predictor, on_feedback=None, host="0.0.0.0", allow_remote=True)
    with LocalApi(predictor=predictor, on_feedback=None) as api:
        assert api.port and api.port > 0
        assert call(api, "POST", "/v1/feedback", {"prediction_id": "p", "label": 1})[0] == 501
    assert api.port is None


def test_ipv6_loopback(model: LoadedModel, raw: np.ndarray) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with LocalApi(predictor=Predictor(model=model), on_feedback=None, host="::1") as api:
        status, body = call(api, "POST", "/v1/predict", {"inputs": raw[0].tolist()})
        assert status == 200 and len(body["ids"]) == 1
