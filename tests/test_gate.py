"""The accuracy gate and its float-fallback remedy."""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from model_packager.gate import (
    AccuracyGateError,
    GateAttempt,
    GateResult,
    accuracy_metric,
    evaluate_onnx,
    quantize_with_gate,
    reconstruction_errors,
    reconstruction_metric_factory,
    require_gate,
)
from model_packager.onnx_export import export_onnx

GEMMS = ("gemm_in", "gemm_outlier", "gemm_head", "gemm_out")


def gemm_chain(*, outlier: float, seed: int = 0) -> bytes:
    """input [N, 8] -> gemm_in (8->8, ~identity) -> gemm_outlier (8->9: the 8 features plus one
    channel ``outlier * x0``) -> gemm_head (9->4, ignores the outlier channel) -> gemm_out (4->4).

    With a large ``outlier`` the activation between gemm_outlier and gemm_head spans +-1e4, so
    its int8 step (~80) rounds the informative features (|x| < 4) to zero: int8 is useless unless
    both nodes around that tensor stay float."""
    rng = np.random.default_rng(seed)
    weights = {
        "gemm_in": np.eye(8) + 0.05 * rng.standard_normal((8, 8)),
        "gemm_outlier": np.vstack([np.eye(8), outlier * np.eye(8)[:1]]),
        "gemm_head": np.hstack([rng.standard_normal((4, 8)), np.zeros((4, 1))]),
        "gemm_out": np.eye(4) + 0.05 * rng.standard_normal((4, 4)),
    }
    tensors = ["input", "h0", "h1", "h2", "output"]
    nodes, inits = [], []
    for i, name in enumerate(GEMMS):
        w = weights[name]
        nodes.append(
            helper.make_node(
                "Gemm",
                [tensors[i], f"{name}.w", f"{name}.b"],
                [tensors[i + 1]],
                name=name,
                transB=1,
            )
        )
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
            numpy_helper.from_array(
                (0.01 * rng.standard_normal(len(w))).astype(np.float32), f"{name}.b"
            ),
        ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def synthetic_task(model: bytes) -> tuple[npt.NDArray[np.float32], ...]:
    """Calibration, test inputs and labels (the fp32 model's own clear-margin decisions)."""
    x = np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32)
    logits = evaluate_onnx(model, inputs=x)
    top2 = np.sort(logits, axis=1)[:, -2:]
    x = x[top2[:, 1] - top2[:, 0] > 0.3]  # no near-ties: int8 noise alone flips none
    return x[:200], x[200:700], evaluate_onnx(model, inputs=x[200:700]).argmax(axis=1)


@pytest.fixture(scope="module")
def outlier_model() -> bytes:
    return gemm_chain(outlier=3000.0)


def test_bad_model_fails_the_gate_without_fallback(outlier_model: bytes) -> None:
    calibration, x, y = synthetic_task(outlier_model)
    result = quantize_with_gate(
        outlier_model,
        calibration=calibration,
        test_inputs=x,
        test_targets=y,
        metric=accuracy_metric,
        max_fallback_steps=0,
    )
    assert result.fp32_metric == 100.0
    assert result.int8_metric < 60.0 and not result.passed
    assert result.drop_pp == pytest.approx(result.fp32_metric - result.int8_metric)
    assert result.nodes_kept_float == [] and len(result.attempts) == 1
    with pytest.raises(AccuracyGateError, match="no float fallback tried") as info:
        require_gate(result)
    assert "all quantized ->" in str(info.value) and info.value.result is result


def test_fallback_keeps_the_sensitive_nodes_in_float(outlier_model: bytes) -> None:
    calibration, x, y = synthetic_task(outlier_model)
    result = quantize_with_gate(
        outlier_model,
        calibration=calibration,
        test_inputs=x,
        test_targets=y,
        metric=accuracy_metric,
    )
    assert result.passed and result.drop_pp <= 1.0
    assert sorted(result.nodes_kept_float) == ["gemm_head", "gemm_outlier"]
    # ranked first: the two nodes that quantize the outlier tensor
    assert set(list(result.sensitivity)[:2]) == {"gemm_head", "gemm_outlier"}
    assert min(result.sensitivity["gemm_head"], result.sensitivity["gemm_outlier"]) > 0.5
    assert max(result.sensitivity["gemm_in"], result.sensitivity["gemm_out"]) < 0.01
    assert [len(a.excluded) for a in result.attempts] == [0, 1, 2]
    assert result.attempts[0].metric < 60.0 and result.attempts[-1].metric == result.int8_metric
    assert result.candidate_nodes == list(GEMMS) and not result.all_float
    # the remaining nodes are still int8; the kept ones read float weights
    model = onnx.load_from_string(require_gate(result))
    by_name = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    for name in GEMMS:
        quantized = name not in result.nodes_kept_float
        assert (by_name[name].input[1] not in inits) == quantized
    np.testing.assert_array_equal(evaluate_onnx(result.int8_bytes, inputs=x).argmax(1), y)


def test_fallback_budget_exhausted_reports_what_was_tried(outlier_model: bytes) -> None:
    calibration, x, y = synthetic_task(outlier_model)
    result = quantize_with_gate(
        outlier_model,
        calibration=calibration,
        test_inputs=x,
        test_targets=y,
        metric=accuracy_metric,
        max_fallback_steps=1,
    )
    assert not result.passed and len(result.attempts) == 2
    # the best attempt is returned; on a tie the one with fewer float nodes
    assert result.int8_metric == max(a.metric for a in result.attempts)
    assert result.nodes_kept_float == [] and not result.all_float
    with pytest.raises(AccuracyGateError, match=r"keeping up to 1 of 4 quantizable nodes") as info:
        require_gate(result)
    assert re.search(
        r"all quantized -> [\d.]+; 1 float \(gemm_(head|outlier)\) ->", str(info.value)
    )


def test_benign_model_passes_on_the_first_attempt() -> None:
    model = gemm_chain(outlier=1.0)
    calibration, x, y = synthetic_task(model)
    result = quantize_with_gate(
        model, calibration=calibration, test_inputs=x, test_targets=y, metric=accuracy_metric
    )
    assert result.passed and result.nodes_kept_float == [] and result.sensitivity == {}
    assert len(result.attempts) == 1 and result.drop_pp <= 1.0
    assert require_gate(result) == result.int8_bytes


def test_all_float_when_every_node_had_to_stay_float() -> None:
    result = GateResult(
        fp32_metric=90.0,
        int8_metric=90.0,
        drop_pp=0.0,
        max_drop_pp=1.0,
        passed=True,
        nodes_kept_float=["b", "a"],
        attempts=[GateAttempt((), 10.0), GateAttempt(("b",), 20.0), GateAttempt(("b", "a"), 90.0)],
        int8_bytes=b"",
        candidate_nodes=["a", "b"],
    )
    assert result.all_float
    assert (
        result.describe() == "all quantized -> 10.00; 1 float (b) -> 20.00; 2 float (b, a) -> 90.00"
    )


def test_evaluate_onnx_batches(outlier_model: bytes) -> None:
    x = np.random.default_rng(3).standard_normal((70, 8)).astype(np.float32)
    whole = evaluate_onnx(outlier_model, inputs=x, batch_size=1000)
    np.testing.assert_array_equal(evaluate_onnx(outlier_model, inputs=x, batch_size=16), whole)
    assert whole.shape == (70, 4) and whole.dtype == np.float32
    with pytest.raises(ValueError):
        evaluate_onnx(outlier_model, inputs=x[:0])


def test_accuracy_metric() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    assert accuracy_metric(outputs, np.array([1, 0, 0, 0])) == 75.0
    with pytest.raises(ValueError, match="labels"):
        accuracy_metric(outputs, None)
    with pytest.raises(ValueError, match=r"outputs \[N, C\]"):
        accuracy_metric(outputs, np.array([1, 0]))


def test_reconstruction_metric_math() -> None:
    windows = np.zeros((4, 2, 3), dtype=np.float32)
    outputs = windows + np.array([0.1, 0.5, 1.0, 2.0], dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(reconstruction_errors(outputs, windows), [0.01, 0.25, 1.0, 4.0])
    normal_only = reconstruction_metric_factory(threshold=0.5)
    assert normal_only(outputs, windows) == 50.0  # two windows flagged: 50% false alarms
    labelled = reconstruction_metric_factory(threshold=0.5, labels=[0, 0, 1, 0])
    assert labelled(outputs, windows) == 75.0
    with pytest.raises(ValueError, match="windows as targets"):
        normal_only(outputs, None)
    with pytest.raises(ValueError, match="differs"):
        normal_only(outputs[:, :1], windows)
    with pytest.raises(ValueError, match="threshold"):
        reconstruction_metric_factory(threshold=float("nan"))


def test_autoencoder_gate_with_reconstruction_metric() -> None:
    """An autoencoder for 3-channel windows whose normal data lies near a 4-dim subspace:
    encoder [Q, -Q]^T -> ReLU -> decoder [Q, -Q] reconstructs the projection onto the subspace
    exactly (relu(z) - relu(-z) = z), no training needed. Anomalies are far off the subspace.
    The int8 variant must keep the alarm decisions."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((48, 4)))[0].astype(np.float32)  # orthonormal columns

    def windows(n: int, noise: float) -> npt.NDArray[np.float32]:
        x = rng.standard_normal((n, 4)).astype(np.float32) @ q.T
        return (x + noise * rng.standard_normal((n, 48))).astype(np.float32).reshape(n, 3, 16)

    encoder, decoder = nn.Linear(48, 8), nn.Linear(8, 48)
    with torch.no_grad():
        encoder.weight.copy_(torch.from_numpy(np.vstack([q.T, -q.T])))
        decoder.weight.copy_(torch.from_numpy(np.hstack([q, -q])))
        encoder.bias.zero_()
        decoder.bias.zero_()
    ae = nn.Sequential(nn.Flatten(), encoder, nn.ReLU(), decoder, nn.Unflatten(1, (3, 16)))
    fp32 = export_onnx(ae, input_shape=(3, 16))

    calibration, validation = windows(256, 0.1), windows(200, 0.1)
    errors = reconstruction_errors(evaluate_onnx(fp32, inputs=validation), validation)
    threshold = float(np.quantile(errors, 0.99))
    test = np.concatenate([windows(300, 0.1), windows(100, 1.0)])
    labels = np.r_[np.zeros(300), np.ones(100)]
    metric = reconstruction_metric_factory(threshold=threshold, labels=labels)
    result = quantize_with_gate(
        fp32,
        calibration=calibration,
        test_inputs=test,
        test_targets=test,
        metric=metric,
        max_drop_pp=1.0,
    )
    assert 97.0 <= result.fp32_metric < 100.0  # a few false alarms at the 99th percentile
    assert result.passed and result.nodes_kept_float == []
    assert abs(result.drop_pp) <= 1.0
    ops = {n.op_type for n in onnx.load_from_string(result.int8_bytes).graph.node}
    assert "QuantizeLinear" in ops
    # the metric is sensitive: a model that adds a little error raises false alarms
    assert metric(evaluate_onnx(fp32, inputs=test) + 0.1, test) < result.fp32_metric - 10
