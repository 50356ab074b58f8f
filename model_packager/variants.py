"""Measure a model variant with its real runtime: accuracy, size, latency, throughput.

Latency is batch 1 (median of repeated single-record runs); throughput is records per
second at batch 64. Both on one CPU thread, so figures are comparable between variants
and with what a small device core does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from model_packager.gate import Metric

LATENCY_RUNS = 200
THROUGHPUT_RUNS = 20
BATCH = 64
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert"}


def onnx_session(model_bytes: bytes, *, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _time(run: Callable[[], object], *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def timing(
    run_batch: Callable[[npt.NDArray[np.float32]], object], inputs: npt.NDArray[np.float32]
) -> dict[str, float]:
    """``latency_ms_b1`` and ``throughput_b64`` of a callable that runs a batch."""
    one = inputs[:1]
    batch = np.ascontiguousarray(np.resize(inputs, (BATCH, *inputs.shape[1:])), dtype=np.float32)
    b1 = _time(lambda: run_batch(one), repeats=LATENCY_RUNS, warmup=20)
    b64 = _time(lambda: run_batch(batch), repeats=THROUGHPUT_RUNS, warmup=3)
    return {
        "latency_ms_b1": round(statistics.median(b1) * 1000, 4),
        "throughput_b64": round(BATCH / statistics.median(b64), 1),
    }


def _runner(model_bytes: bytes, fmt: str) -> Callable[[npt.NDArray[np.float32]], np.ndarray]:
    if fmt == "onnx":
        session = onnx_session(model_bytes)
        name = session.get_inputs()[0].name
        return lambda x: np.asarray(session.run(None, {name: x})[0])
    from model_packager.litert import TFLiteRunner

    return TFLiteRunner(model_bytes).run


def measure_variant(
    model_bytes: bytes,
    *,
    file: str,
    inputs: npt.NDArray[np.float32],
    targets: np.ndarray | None,
    metric: Metric,
    metric_name: str,
    nodes_kept_float: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate ``model.<precision>.<onnx|tflite>`` on its runtime and time it."""
    _, precision, fmt = file.split(".")
    if fmt not in RUNTIMES:
        raise ValueError(f"{file}: unknown model format {fmt!r}; known: {sorted(RUNTIMES)}")
    run = _runner(model_bytes, fmt)
    outputs = np.concatenate([run(inputs[i : i + 256]) for i in range(0, len(inputs), 256)])
    return {
        "file": file,
        "format": fmt,
        "precision": precision,
        "runtime": RUNTIMES[fmt],
        "size_bytes": len(model_bytes),
        "accuracy": round(metric(outputs, targets), 4),
        "metric": metric_name,
        "nodes_kept_float": list(nodes_kept_float),
        **timing(run, inputs),
    }
