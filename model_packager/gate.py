"""The accuracy gate: int8 may not lose more than ``max_drop_pp`` points against fp32.

Both variants run through onnxruntime CPU on the same test set and are scored by one
:class:`Metric` (percentage points, higher is better). When the int8 model fails, the standard
remedy is applied: keep the most quantization-sensitive nodes in float, one more at a time,
until the gate passes or nothing is left.

Sensitivity ranking (bounded cost): each candidate node (:func:`quantizable_nodes`: Conv, Gemm,
MatMul, ...) is quantized *alone* (``nodes_to_quantize=[node]``) and scored by the relative MSE
of the model output against fp32 on up to ``sensitivity_samples`` calibration samples (not the
test set, so the test set only judges). "Alone" rather than "all but this one": in QDQ a tensor
is quantized when its producer *or* any consumer is, so a destructive activation (e.g. a huge
outlier channel) between two quantized nodes only disappears when both are kept float; excluding
one node at a time scores both as harmless, quantizing one at a time flags both. Calibration
runs once (onnxruntime's calibration cache), so the cost is ``N`` graph rewrites + ``N`` small
inference runs for ranking plus at most ``max_fallback_steps`` (default ``N``) rewrites + test
runs for the fallback, ``N`` = number of candidate nodes.

Importing this module needs numpy only (onnxruntime when evaluating, onnx + onnxruntime's
quantization tools when quantizing), so the metrics and :func:`evaluate_onnx` work on a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from model_packager.errors import PackagerError

if TYPE_CHECKING:
    from model_packager.quantize import CalibrateMethod, StaticInt8Quantizer

__all__ = [
    "AccuracyGateError",
    "GateAttempt",
    "GateResult",
    "Metric",
    "accuracy_metric",
    "evaluate_onnx",
    "kernel_deviation",
    "quantize_with_gate",
    "reconstruction_errors",
    "reconstruction_metric_factory",
    "require_gate",
]


class Metric(Protocol):
    """``(outputs, targets) -> score`` in percentage points, higher is better."""

    def __call__(
        self, outputs: npt.NDArray[np.float32], targets: np.ndarray | None, /
    ) -> float: ...


def evaluate_onnx(
    onnx_bytes: bytes,
    *,
    inputs: npt.NDArray[np.float32],
    batch_size: int = 256,
    fused: bool = True,
) -> npt.NDArray[np.float32]:
    """The (first) output of the model on ``inputs`` with onnxruntime CPU, in batches.

    ``fused=False`` turns onnxruntime's graph optimisations off: a QDQ model then runs its
    QuantizeLinear / DequantizeLinear in float around float ops, the model's own arithmetic,
    the same on every CPU (slow; for checking the fused int8 kernels of this CPU against it).
    """
    import onnxruntime as ort

    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    parts = [
        np.asarray(session.run(None, {name: x[i : i + batch_size]})[0], dtype=np.float32)
        for i in range(0, len(x), batch_size)
    ]
    if not parts:
        raise ValueError("inputs is empty")
    return np.concatenate(parts)


def kernel_deviation(int8_bytes: bytes, *, inputs: npt.NDArray[np.float32]) -> float:
    """Max |fused int8 kernels of this CPU - the QDQ model's own arithmetic| over ``inputs``:
    near 0 when the kernels compute what the model says; large when they saturate (u8 x s8
    ``vpmaddubsw`` on x86 without VNNI with full-range weights, see model_packager.quantize)."""
    fused = evaluate_onnx(int8_bytes, inputs=inputs)
    reference = evaluate_onnx(int8_bytes, inputs=inputs, fused=False)
    return float(np.abs(fused - reference).max())


def accuracy_metric(outputs: npt.NDArray[np.float32], targets: np.ndarray | None, /) -> float:
    """Classification accuracy in %: argmax of ``outputs`` ``[N, C]`` against integer labels."""
    if targets is None:
        raise ValueError("accuracy_metric needs integer labels as targets")
    labels = np.asarray(targets)
    if outputs.ndim != 2 or labels.shape != (len(outputs),):
        raise ValueError(
            f"accuracy_metric expects outputs [N, C] and labels [N], got {list(outputs.shape)} "
            f"and {list(labels.shape)}"
        )
    return float(np.mean(outputs.argmax(axis=1) == labels) * 100.0)


def reconstruction_errors(
    outputs: npt.NDArray[np.float32], windows: np.ndarray
) -> npt.NDArray[np.float64]:
    """Per-window mean squared error between an autoencoder's reconstruction and its input."""
    w = np.asarray(windows, dtype=np.float64)
    if outputs.shape != w.shape:
        raise ValueError(
            f"reconstruction shape {list(outputs.shape)} differs from the windows' {list(w.shape)}"
        )
    diff = outputs.astype(np.float64) - w
    return np.asarray(np.mean(diff.reshape(len(w), -1) ** 2, axis=1))


def reconstruction_metric_factory(
    *, threshold: float, labels: npt.ArrayLike | None = None
) -> Metric:
    """Metric for an anomaly-detecting autoencoder, in % of windows decided correctly.

    The device flags a window as anomalous when its reconstruction MSE exceeds ``threshold``
    (typically a high quantile of the fp32 model's errors on normal validation data, see
    :func:`reconstruction_errors`). ``targets`` are the input windows themselves. Without
    ``labels`` the test windows are taken as normal and the score is the % not flagged (100 minus
    the false-alarm rate); with ``labels`` (one per window, truthy = anomaly) it is the % whose
    flag equals the label. A drop of X points therefore means X% of windows get a different alarm
    decision, the unit a "max drop" can be argued in; a relative MSE increase is not (it mostly
    changes nothing on the device, unless it crosses the threshold).
    """
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError("threshold must be a finite, non-negative MSE")
    truth = None if labels is None else np.asarray(labels).astype(bool).reshape(-1)

    def metric(outputs: npt.NDArray[np.float32], targets: np.ndarray | None, /) -> float:
        if targets is None:
            raise ValueError("the reconstruction metric needs the input windows as targets")
        flags = reconstruction_errors(outputs, targets) > threshold
        if truth is None:
            return float(np.mean(~flags) * 100.0)
        if truth.shape != flags.shape:
            raise ValueError(f"{len(truth)} labels for {len(flags)} windows")
        return float(np.mean(flags == truth) * 100.0)

    return metric


class GateAttempt(NamedTuple):
    excluded: tuple[str, ...]  # nodes kept in float for this attempt
    metric: float


@dataclass(frozen=True, kw_only=True)
class GateResult:
    fp32_metric: float
    int8_metric: float
    drop_pp: float
    max_drop_pp: float
    passed: bool
    nodes_kept_float: list[str]
    attempts: list[GateAttempt]
    int8_bytes: bytes = field(repr=False)
    candidate_nodes: list[str] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)  # node -> relative output MSE

    @property
    def all_float(self) -> bool:
        """True when the fallback had to keep every candidate node in float: the "int8" model
        is then effectively the fp32 one, and shipping it gains nothing."""
        return bool(self.candidate_nodes) and set(self.nodes_kept_float) >= set(
            self.candidate_nodes
        )

    def describe(self) -> str:
        """What was tried, one clause per attempt (for logs and error messages)."""
        shown = list(enumerate(self.attempts))
        if len(shown) > 6:
            shown = [*shown[:3], (-1, GateAttempt((), float("nan"))), *shown[-2:]]
        parts = []
        for i, (excluded, value) in shown:
            if i < 0:
                parts.append("...")
            elif not excluded:
                parts.append(f"all quantized -> {value:.2f}")
            else:
                parts.append(f"{len(excluded)} float ({', '.join(excluded)}) -> {value:.2f}")
        return "; ".join(parts)


class AccuracyGateError(PackagerError, RuntimeError):
    """The int8 model loses too much accuracy, even with the float fallback."""

    def __init__(self, message: str, *, result: GateResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def quantize_with_gate(
    onnx_fp32: bytes,
    *,
    calibration: npt.NDArray[np.float32],
    test_inputs: npt.NDArray[np.float32],
    test_targets: np.ndarray | None,
    metric: Metric,
    max_drop_pp: float = 1.0,
    input_name: str = "input",
    max_fallback_steps: int | None = None,
    per_channel: bool = True,
    calibrate_method: CalibrateMethod = "minmax",
    sensitivity_samples: int = 256,
) -> GateResult:
    """Quantize ``onnx_fp32`` (static int8, see :mod:`model_packager.quantize`) and gate it.

    If ``metric(fp32) - metric(int8) > max_drop_pp``, rank the candidate nodes by sensitivity
    and keep the top 1, 2, ... in float (at most ``max_fallback_steps`` attempts, default all)
    until the gate passes. The result is the first passing attempt, or (``passed=False``) the
    best-scoring one; :func:`require_gate` turns a failure into :class:`AccuracyGateError`.
    """
    from model_packager.quantize import StaticInt8Quantizer

    if max_drop_pp < 0:
        raise ValueError("max_drop_pp must be >= 0")
    if max_fallback_steps is not None and max_fallback_steps < 0:
        raise ValueError("max_fallback_steps must be >= 0")
    fp32_metric = float(metric(evaluate_onnx(onnx_fp32, inputs=test_inputs), test_targets))
    attempts: list[GateAttempt] = []
    kept: dict[tuple[str, ...], bytes] = {}  # int8 bytes of the best and the latest attempt

    def passes(value: float) -> bool:
        return bool(fp32_metric - value <= max_drop_pp)  # False for NaN

    with StaticInt8Quantizer(
        onnx_fp32,
        calibration=calibration,
        input_name=input_name,
        per_channel=per_channel,
        calibrate_method=calibrate_method,
    ) as quantizer:

        def attempt(excluded: Sequence[str]) -> bool:
            int8 = quantizer.quantize(exclude_nodes=excluded)
            value = float(metric(evaluate_onnx(int8, inputs=test_inputs), test_targets))
            attempts.append(GateAttempt(tuple(excluded), value))
            kept[tuple(excluded)] = int8
            for key in set(kept) - {_best(attempts).excluded, tuple(excluded)}:
                del kept[key]
            return passes(value)

        sensitivity: dict[str, float] = {}
        nodes = list(quantizer.nodes)
        steps = len(nodes) if max_fallback_steps is None else min(max_fallback_steps, len(nodes))
        if not attempt(()) and steps > 0:
            sample = np.asarray(calibration, dtype=np.float32)[:sensitivity_samples]
            sensitivity = _rank_sensitivity(quantizer, onnx_fp32, sample)
            order = list(sensitivity)
            for k in range(1, steps + 1):
                if attempt(order[:k]):
                    break

    final = attempts[-1] if passes(attempts[-1].metric) else _best(attempts)
    return GateResult(
        fp32_metric=fp32_metric,
        int8_metric=final.metric,
        drop_pp=fp32_metric - final.metric,
        max_drop_pp=max_drop_pp,
        passed=passes(final.metric),
        nodes_kept_float=list(final.excluded),
        attempts=attempts,
        int8_bytes=kept[final.excluded],
        candidate_nodes=nodes,
        sensitivity=sensitivity,
    )


def _best(attempts: list[GateAttempt]) -> GateAttempt:
    best = attempts[0]
    for candidate in attempts[1:]:
        if candidate.metric > best.metric or np.isnan(best.metric):
            best = candidate
    return best


def _rank_sensitivity(
    quantizer: StaticInt8Quantizer, onnx_fp32: bytes, sample: npt.NDArray[np.float32]
) -> dict[str, float]:
    """node -> relative output MSE with only that node quantized, most sensitive first."""
    reference = evaluate_onnx(onnx_fp32, inputs=sample).astype(np.float64)
    power = max(float(np.mean(reference**2)), 1e-12)
    errors: dict[str, float] = {}
    for node in quantizer.nodes:
        out = evaluate_onnx(quantizer.quantize(only_nodes=[node]), inputs=sample)
        error = float(np.mean((out.astype(np.float64) - reference) ** 2) / power)
        errors[node] = error if np.isfinite(error) else float("inf")
    return dict(sorted(errors.items(), key=lambda item: item[1], reverse=True))


def require_gate(result: GateResult) -> bytes:
    """The int8 model bytes if the gate passed; otherwise :class:`AccuracyGateError` saying what
    was tried."""
    if result.passed:
        return result.int8_bytes
    tried = len(result.attempts) - 1
    fallback = (
        f"even after keeping up to {tried} of {len(result.candidate_nodes)} quantizable nodes in "
        "float, most sensitive first"
        if tried
        else "with no float fallback tried"
    )
    raise AccuracyGateError(
        f"int8 model loses {result.drop_pp:.2f} points (fp32 {result.fp32_metric:.2f}, int8 "
        f"{result.int8_metric:.2f}; limit {result.max_drop_pp:.2f}) {fallback}. Tried: "
        f"{result.describe()}. Ship the fp32 variant only, give more representative calibration "
        "data, or raise the limit.",
        result=result,
    )
