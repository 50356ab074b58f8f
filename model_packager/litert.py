"""Run TFLite models with the LiteRT interpreter (numpy only: devices import this).

``ai-edge-litert`` is the runtime (``tflite-runtime`` is the fallback; it crashes under
numpy 2). Models have a fixed batch: :class:`TFLiteRunner` chunks rows and pads the last
chunk. Integer input/output tensors are quantized/dequantized with their own parameters.
"""

from __future__ import annotations

import contextlib
import importlib
from collections import Counter
from typing import Any

import numpy as np

from model_packager.errors import PackagerError

__all__ = [
    "INSTALL_HINT",
    "RUNTIME_HINT",
    "TFLiteRunner",
    "TFLiteUnavailable",
    "describe_tflite",
    "run_tflite",
]

INSTALL_HINT = "pip install 'edgeloop[tflite]'"
RUNTIME_HINT = "pip install 'edgeloop[agent]'"
_INT_DTYPES = (np.int8, np.uint8, np.int16)


class TFLiteUnavailable(PackagerError, RuntimeError):
    """The TFLite converter (litert-torch) or the LiteRT runtime is not installed."""

    def __init__(self, what: str, *, hint: str = INSTALL_HINT, cause: str = "") -> None:
        detail = f" ({cause})" if cause else ""
        super().__init__(
            f"TFLite support is not available: {what} cannot be imported{detail}. "
            f"Enable it with: {hint}"
        )


def _import(name: str, *, what: str, hint: str = INSTALL_HINT) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise TFLiteUnavailable(what, hint=hint, cause=str(exc)) from exc


def _interpreter_module() -> Any:
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    raise TFLiteUnavailable("the LiteRT runtime (ai-edge-litert)", hint=RUNTIME_HINT)


def _interpreter(model_bytes: bytes, *, delegates: bool = True) -> Any:
    module = _interpreter_module()
    kwargs: dict[str, Any] = {"model_content": bytes(model_bytes)}
    if not delegates:  # the plain op graph, for describing the model
        kwargs["experimental_op_resolver_type"] = (
            module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    try:
        interpreter = module.Interpreter(**kwargs)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"not a loadable TFLite model: {exc}") from exc
    return interpreter


def _qparams(detail: dict[str, Any]) -> tuple[float, int] | None:
    """Per-tensor (scale, zero_point) of an integer I/O tensor; None for float tensors."""
    if detail["dtype"] not in _INT_DTYPES:
        return None
    scale, zero_point = detail["quantization"]
    if scale == 0.0:
        raise ValueError(f"integer tensor {detail['name']!r} has no quantization parameters")
    return float(scale), int(zero_point)


def _quantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    params = _qparams(detail)
    if params is None:
        return values.astype(detail["dtype"], copy=False)
    scale, zero_point = params
    info = np.iinfo(detail["dtype"])
    scaled = np.round(values / scale) + zero_point
    return np.clip(scaled, info.min, info.max).astype(detail["dtype"])


def _dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    params = _qparams(detail)
    if params is None:
        return values.astype(np.float32, copy=False)
    scale, zero_point = params
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _single(details: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    if len(details) != 1:
        raise ValueError(f"run_tflite supports models with one {kind}, this one has {len(details)}")
    return details[0]


class TFLiteRunner:
    """One loaded interpreter, reused across calls (what a device keeps in a slot).

    :meth:`run` pushes every row of ``inputs`` (float, ``(N, *input_shape)``) through the
    model and returns float32 outputs ``(N, *output_shape)``: int8 inputs are quantized and
    int8 outputs dequantized with the tensors' own parameters; rows go through in chunks of
    the model's fixed batch, the last chunk zero-padded and the padding dropped.
    """

    def __init__(self, model_bytes: bytes, *, batch: int | None = None) -> None:
        self._interpreter = _interpreter(model_bytes)
        self._input = _single(self._interpreter.get_input_details(), "input")
        self._output = _single(self._interpreter.get_output_details(), "output")
        self.row_shape = tuple(int(d) for d in self._input["shape"][1:])
        fixed = int(self._input["shape"][0])
        self.batch = fixed if batch is None else batch
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")
        if self.batch != fixed:
            try:
                self._interpreter.resize_tensor_input(
                    self._input["index"], [self.batch, *self.row_shape]
                )
                self._interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"this model's batch is fixed at {fixed}: {exc}") from exc
            self._output = _single(self._interpreter.get_output_details(), "output")

    def run(self, inputs: np.ndarray) -> np.ndarray:
        rows = np.asarray(inputs, dtype=np.float32)
        shape = self.row_shape
        if rows.ndim != len(shape) + 1 or rows.shape[1:] != shape:
            raise ValueError(
                f"inputs must have shape (N, {', '.join(map(str, shape))}), got {rows.shape}"
            )
        inp, out, size = self._input, self._output, self.batch
        results: list[np.ndarray] = []
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            count = len(chunk)
            if count < size:
                chunk = np.concatenate([chunk, np.zeros((size - count, *shape), np.float32)])
            self._interpreter.set_tensor(inp["index"], _quantize(chunk, inp))
            self._interpreter.invoke()
            results.append(_dequantize(self._interpreter.get_tensor(out["index"])[:count], out))
        if not results:
            return np.zeros((0, *(int(d) for d in out["shape"][1:])), dtype=np.float32)
        return np.concatenate(results)


def run_tflite(model_bytes: bytes, inputs: np.ndarray, *, batch: int | None = None) -> np.ndarray:
    """Run every row of ``inputs`` through a TFLite model (see :class:`TFLiteRunner`).

    A ``batch`` other than the model's resizes its input, which raises ValueError where the
    runtime cannot resize the model.
    """
    return TFLiteRunner(model_bytes, batch=batch).run(inputs)


def _io(detail: dict[str, Any]) -> dict[str, Any]:
    params = _qparams(detail)
    return {
        "name": str(detail["name"]),
        "shape": [int(d) for d in detail["shape"]],
        "shape_signature": [int(d) for d in detail.get("shape_signature", detail["shape"])],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": (None if params is None else {"scale": params[0], "zero_point": params[1]}),
    }


def describe_tflite(model_bytes: bytes) -> dict[str, Any]:
    """JSON-ready facts about a TFLite model, for the bundle manifest.

    ``inputs``/``outputs``: name, shape, dtype and per-tensor quantization (``scale``,
    ``zero_point``; None for float tensors). ``batch_size``: the fixed batch (None if
    dynamic). ``tensors`` counts all tensors by dtype, ``weights`` the constant ones (op
    inputs no op produces), ``per_channel_weights`` those with per-channel scales, ``ops``
    the builtin ops. ``full_integer``: no float32 tensor anywhere.
    """
    interpreter = _interpreter(model_bytes, delegates=False)
    inputs = [_io(d) for d in interpreter.get_input_details()]
    outputs = [_io(d) for d in interpreter.get_output_details()]
    tensors = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    consumed = {int(i) for op in ops for i in op["inputs"] if int(i) >= 0}
    constant = consumed - produced - graph_inputs
    by_index = {int(t["index"]): t for t in tensors}
    weight_dtypes = Counter(np.dtype(by_index[i]["dtype"]).name for i in constant if i in by_index)
    per_channel = sum(
        1
        for i in constant
        if i in by_index and len(by_index[i]["quantization_parameters"]["scales"]) > 1
    )
    tensor_dtypes = Counter(np.dtype(t["dtype"]).name for t in tensors)
    signature = inputs[0]["shape_signature"] if inputs else []
    return {
        "size_bytes": len(model_bytes),
        "inputs": inputs,
        "outputs": outputs,
        "batch_size": signature[0] if signature and signature[0] > 0 else None,
        "tensors": dict(sorted(tensor_dtypes.items())),
        "int8_tensors": tensor_dtypes.get("int8", 0),
        "weights": dict(sorted(weight_dtypes.items())),
        "int8_weights": weight_dtypes.get("int8", 0),
        "per_channel_weights": per_channel,
        "ops": dict(sorted(Counter(str(op["op_name"]) for op in ops).items())),
        "full_integer": tensor_dtypes.get("float32", 0) == 0,
    }
