"""The predictor on a real bundle: shapes, ids, labels, hot swap, observers, shadow mode."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent import (
    LoadedModel,
    NoModelLoaded,
    PredictionError,
    Predictor,
    ShadowReport,
    load_slot,
)
from tests.fixtures.bundles import BuiltBundle


@pytest.fixture(scope="module")
def model(digits_bundle: BuiltBundle) -> LoadedModel:
    return load_slot(digits_bundle.slot_dir, prefer=["onnx:int8"])


@pytest.fixture(scope="module")
def fp32(digits_bundle: BuiltBundle) -> LoadedModel:
    return load_slot(digits_bundle.slot_dir, prefer=["onnx:fp32"])


@pytest.fixture(scope="module")
def raw(digits_bundle: BuiltBundle) -> np.ndarray:
    with np.load(digits_bundle.slot_dir / "samples.npz") as npz:
        return np.asarray(npz["self_test"])


class Offset:
    """A runtime that returns its input plus a constant (a fake reconstruction model)."""

    def __init__(self, offset: float = 0.0, *, fail: bool = False) -> None:
        self.name, self.offset, self.fail = f"offset:{offset}", offset, fail

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("the accelerator fell over")
        return x + np.float32(self.offset)


def _reconstruction(
    model: LoadedModel, offset: float, *, p99: float | None = 0.5, fail: bool = False
) -> LoadedModel:
    manifest: dict[str, Any] = {**model.manifest, "task": "reconstruction", "version": str(offset)}
    profile = {"output": {"score_quantiles": {"p99": p99}}} if p99 is not None else {}
    manifest["reference_profile"] = profile
    return dataclasses.replace(
        model, manifest=manifest, task="reconstruction", runtime=Offset(offset, fail=fail)
    )


@pytest.mark.parametrize("mean", [0.0, -0.0, 0.5, [0.0] * 64, [0.0] * 63 + [1.0]])
def test_the_transform_is_bit_identical_with_and_without_a_zero_mean(
    model: LoadedModel, raw: np.ndarray, mean: Any
) -> None:
    """A zero mean is skipped on the hot path: it must not change a single bit."""
    pre = model.preprocess.model_copy(update={"mean": mean, "scale": 3.0})
    changed = dataclasses.replace(model, preprocess=pre)
    got = Predictor(model=changed, device_id="d", boot_id="b").predict(raw)
    np.testing.assert_array_equal(got.outputs, model.runtime.run(pre.apply(raw)))
    negative_zero = -np.zeros_like(raw)
    out = Predictor(model=changed, device_id="d", boot_id="b").predict(negative_zero)
    np.testing.assert_array_equal(out.outputs, model.runtime.run(pre.apply(negative_zero)))


def test_single_record_and_batch_agree(model: LoadedModel, raw: np.ndarray) -> None:
    predictor = Predictor(model=model, device_id="dev-1", boot_id="b0")
    batch = predictor.predict(raw)
    single = predictor.predict(raw[3])
    one_row = predictor.predict(raw[3:4])
    assert batch.outputs.shape == (16, 10) and single.outputs.shape == (1, 10)
    np.testing.assert_array_equal(single.outputs, batch.outputs[3:4])
    np.testing.assert_array_equal(single.outputs, one_row.outputs)
    # bit-identical to the documented transform + the runtime
    np.testing.assert_array_equal(batch.outputs, model.runtime.run(model.preprocess.apply(raw)))
    assert batch.labels == [str(i) for i in batch.outputs.argmax(axis=1)]
    assert single.labels == [batch.labels[3]] and batch.scores is None
    assert (batch.model, batch.version, batch.variant) == ("digits-mlp", "1", "model.int8.onnx")
    assert batch.latency_ms > 0
    ids = batch.ids + single.ids + one_row.ids
    assert len(set(ids)) == 18 and all(i.startswith("dev-1-b0-") for i in ids)
    # integers and nested lists are raw records too
    as_list = predictor.predict(raw[3].astype(np.int64).tolist())
    ints = predictor.predict(raw[3:4].astype(np.int64))
    np.testing.assert_allclose(as_list.outputs, ints.outputs)
    stats = predictor.stats()
    assert (stats.calls, stats.records, stats.errors) == (5, 20, 0)
    assert predictor.count == 5 and predictor.errors == 0


def test_wrong_inputs_are_value_errors_naming_the_shape(
    model: LoadedModel, raw: np.ndarray
) -> None:
    predictor = Predictor(model=model)
    with pytest.raises(ValueError, match=r"expects raw records of shape \[8, 8\].*got \[63\]"):
        predictor.predict(raw[0].reshape(64)[:63])
    with pytest.raises(ValueError, match=r"got \[2, 3, 8, 8\]"):
        predictor.predict(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="empty batch"):
        predictor.predict(np.zeros((0, 8, 8)))
    with pytest.raises(ValueError, match="real numbers"):
        predictor.predict(np.full((8, 8), "x"))
    with pytest.raises(NoModelLoaded):
        Predictor().predict(raw)
    assert predictor.stats().errors == 0


def test_runtime_failures_are_counted_and_wrapped(model: LoadedModel, raw: np.ndarray) -> None:
    broken = dataclasses.replace(model, runtime=Offset(fail=True))
    predictor = Predictor(model=broken)
    for _ in range(2):
        with pytest.raises(PredictionError, match=r"digits-mlp@1 .*fell over"):
            predictor.predict(raw)
    assert predictor.errors == 2 and predictor.count == 0


def test_observers_see_every_prediction_and_cannot_break_it(
    model: LoadedModel, raw: np.ndarray
) -> None:
    predictor = Predictor(model=model)
    seen: list[tuple[Any, ...]] = []

    def broken(*_args: object) -> None:
        raise RuntimeError("telemetry is down")

    predictor.add_observer(broken)
    predictor.add_observer(lambda *args: seen.append(args))
    first = predictor.predict(raw[:4])
    second = predictor.predict(raw[5])
    assert len(seen) == 2 and predictor.stats().observer_errors == 2
    x, inputs, outputs, latency_ms, ids, served = seen[1]
    assert x.shape == (1, 8, 8) and inputs.shape == (1, 64)
    np.testing.assert_array_equal(inputs, model.preprocess.apply(raw[5:6]))
    assert outputs is second.outputs and ids == second.ids and served is model
    assert latency_ms == second.latency_ms and seen[0][4] == first.ids
    predictor.remove_observer(broken)
    predictor.predict(raw[0])
    assert predictor.stats().observer_errors == 2


def test_swap_under_concurrent_predictions(
    model: LoadedModel, fp32: LoadedModel, raw: np.ndarray
) -> None:
    expected = {m.variant_file: m.runtime.run(m.preprocess.apply(raw[:2])) for m in (model, fp32)}
    assert not np.array_equal(expected[model.variant_file], expected[fp32.variant_file])
    predictor = Predictor(model=model)
    stop = threading.Event()
    errors: list[BaseException] = []
    served: dict[str, int] = {name: 0 for name in expected}
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            while not stop.is_set():
                p = predictor.predict(raw[:2])
                np.testing.assert_array_equal(p.outputs, expected[p.variant])
                with lock:
                    served[p.variant] += 1
                    ids.extend(p.ids)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    previous = []
    for i in range(100):
        previous.append(predictor.swap(fp32 if i % 2 == 0 else model))
        time.sleep(0.002)  # let the workers predict on each model
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert all(served.values()), served
    assert len(ids) == len(set(ids))
    assert previous[0] is model and previous[1] is fp32
    assert predictor.swap(None) is model and predictor.model is None


def test_shadow_of_the_same_model_agrees_fully(
    model: LoadedModel, digits_bundle: BuiltBundle, raw: np.ndarray
) -> None:
    predictor = Predictor(model=model)
    reports: list[ShadowReport] = []
    predictor.add_shadow_observer(reports.append)
    predictor.set_shadow(load_slot(digits_bundle.slot_dir, prefer=["onnx:int8"]), fraction=1.0)
    served = [predictor.predict(raw), predictor.predict(raw[0])]
    assert [(r.compared, r.agreed, r.errors) for r in reports] == [(16, 16, 0), (1, 1, 0)]
    assert reports[0].ids == served[0].ids and reports[0].method == "argmax"
    assert reports[0].agreement == 1.0 and np.isfinite(reports[0].latency_delta_ms)
    assert reports[0].shadow.ref == "digits-mlp@1"

    predictor.set_shadow(predictor.shadow, fraction=0.0)
    predictor.predict(raw)
    assert len(reports) == 2
    predictor.set_shadow(predictor.shadow, fraction=0.5)
    for _ in range(200):
        predictor.predict(raw[0])
    assert 50 < len(reports) - 2 < 150
    predictor.set_shadow(None)
    assert predictor.shadow is None
    with pytest.raises(ValueError, match="fraction"):
        predictor.set_shadow(model, fraction=1.5)


def test_a_failing_shadow_never_changes_the_served_result(
    model: LoadedModel, raw: np.ndarray
) -> None:
    predictor = Predictor(model=model)
    reports: list[ShadowReport] = []
    predictor.add_shadow_observer(reports.append)

    def broken(_report: ShadowReport) -> None:
        raise RuntimeError("the shadow observer is broken too")

    predictor.add_shadow_observer(broken)
    predictor.set_shadow(dataclasses.replace(model, runtime=Offset(fail=True)), fraction=1.0)
    result = predictor.predict(raw)
    np.testing.assert_array_equal(result.outputs, model.runtime.run(model.preprocess.apply(raw)))
    (report,) = reports
    assert (report.compared, report.errors, report.method) == (0, 16, "failed")
    assert "fell over" in report.error
    stats = predictor.stats()
    assert (stats.shadow_errors, stats.observer_errors, stats.errors) == (1, 1, 0)


def test_reconstruction_scores_and_shadow_agreement(model: LoadedModel, raw: np.ndarray) -> None:
    identity = _reconstruction(model, 0.0)
    predictor = Predictor(model=identity)
    result = predictor.predict(raw[:4])
    assert result.labels is None and result.scores is not None
    np.testing.assert_array_equal(result.scores, np.zeros(4))
    reports: list[ShadowReport] = []
    predictor.add_shadow_observer(reports.append)
    predictor.set_shadow(_reconstruction(model, 0.1), fraction=1.0)  # error 0.01 < p99 0.5
    predictor.predict(raw[:4])
    predictor.set_shadow(_reconstruction(model, 1.0), fraction=1.0)  # error 1.0 > p99: flags
    predictor.predict(raw[:4])
    predictor.set_shadow(_reconstruction(model, 1e-3, p99=None), fraction=1.0, atol=1e-2)
    predictor.predict(raw[:4])
    assert [(r.method, r.agreed) for r in reports] == [
        ("anomaly_flag", 4),
        ("anomaly_flag", 0),
        ("max_abs_diff<=0.01", 4),
    ]


@pytest.mark.parametrize("task", ["classification", "reconstruction"])
def test_the_agent_windows_what_it_predicted(
    model: LoadedModel, raw: np.ndarray, tmp_path: Path, task: str
) -> None:
    """The hand-off to the telemetry tick: a classifier's window counts its classes; a
    reconstruction model's (whose model inputs travel with each call) its scores."""
    from edge_agent.agent import Agent
    from edge_agent.settings import AgentSettings
    from proto import messages_pb2 as pb

    key = tmp_path / "hub.pub"
    key.write_text("00" * 32)
    agent = Agent(
        settings=AgentSettings(
            device_id="d",
            data_dir=tmp_path / "agent",
            mqtt_url="mqtt://127.0.0.1:9",
            public_key=key,
        )
    )
    served = model
    if task == "reconstruction":  # outputs = inputs + 0.25: every score is 0.25**2
        served = _reconstruction(model, 0.25)
        score = {"edges": [0.01, 0.1, 1.0], "counts": [1, 1, 1, 1]}
        profile = {
            **model.manifest["reference_profile"],
            "output": {"kind": "score", "score": score, "score_quantiles": {"p99": 0.5}},
        }
        served = dataclasses.replace(
            served, manifest={**served.manifest, "reference_profile": profile}
        )
    agent.serve(served)  # what a deploy does once the slot is verified
    for i in range(5):
        agent.predict(raw[i])  # single records, the local API's shape
    agent.predict(raw[5:8])  # and a batch
    agent.flush()
    windows = [pb.TelemetryWindow.FromString(i.payload) for i in agent.queue.peek()]
    windows = [w for w in windows if w.count]
    assert [w.count for w in windows] == [8]
    assert sum(windows[0].output_counts) == 8
    if task == "classification":
        expected = np.bincount(served.runtime.run(served.preprocess.apply(raw[:8])).argmax(1))
        assert list(windows[0].output_counts[: len(expected)]) == list(expected)
    else:  # 0.0625 lies between the edges 0.01 and 0.1
        assert list(windows[0].output_counts) == [0, 8, 0, 0]
    agent.queue.close()
