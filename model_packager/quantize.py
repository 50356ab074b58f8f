"""Static int8 quantization of an ONNX model with ``onnxruntime.quantization``.

Settings, measured on two digits CNNs (14k and 90k parameters; onnxruntime 1.32, one CPU
thread, x86 with AVX-512 VNNI; relative MSE of the logits against fp32 on held-out data):

* ``quant_pre_process`` first (symbolic + ONNX shape inference, onnxruntime's basic graph
  optimisations: constant folding, Conv+BatchNorm fusion), through temporary files.
* QDQ format (QuantizeLinear/DequantizeLinear around float ops), which onnxruntime fuses into
  QLinearConv / QGemm at session creation, and which ARM / NNAPI / XNNPACK consume.
  QOperator with int8 activations ran 6-8x *slower* than fp32 (no fused S8S8 kernels on x86);
  QOperator U8S8 matched QDQ in speed and accuracy.
* int8 (``QInt8``) weights and activations (S8S8, what ARM kernels want; U8S8 measured the same
  on x86). Weights symmetric, per output channel: relMSE 8.7e-5 against 1.2e-4 per-tensor.
  Activations *asymmetric*: symmetric ones were less accurate (1.4e-4) and slower (batch-64
  throughput 1.7x instead of 2.5x fp32 on the 90k CNN), because a ReLU can then no longer be
  folded into the quantized op before it.
* **7-bit weights** (``reduce_range=True``, weights in [-64, 64]), so the model computes the
  same on every CPU. On x86, onnxruntime runs int8 convolutions and matmuls as u8 x s8 (int8
  activations shifted by 128); without VNNI (AVX2, AVX-512 without VNNI; and, measured
  below, some kernels on this VNNI Xeon too) the inner product is ``vpmaddubsw``, which adds
  two u8 x s8 products into a *saturating* int16: with full-range weights 255 x (127 + 127)
  overflows and the fused kernel silently computes something else than the model says (an
  AMD EPYC without VNNI was off by 0.13 on outputs of scale 2; on digits-cnn here the fused
  kernels differed from the model's own QDQ arithmetic by up to 0.13 in the logits). With
  |w| <= 64 a pair is at most 255 x 128 = 32640 < 32767: no saturation on any x86, and ARM
  (sdot/udot, int32 sums) never saturates. Measured on digits-cnn (defaults: 32 channels,
  90k parameters; 278 test digits; onnxruntime 1.32, one thread, Xeon with AVX-512 VNNI;
  the max differences are in logits of range -15..21, the first one dominated by the
  calibrated output range clipping the largest logit; "kernel" = fused int8 kernels against
  the same model run unfused, Q/DQ in float):

  ========================  ======  =========  ========  ======  ============  ==========
  variant                   bytes   b1 ms      b64 /s    acc %   max |q-fp32|  max kernel
  ========================  ======  =========  ========  ======  ============  ==========
  fp32                      364640  0.031      43 000    99.64   0             0
  S8S8 full-range (before)   99141  0.025-029  96-98k    99.64   2.46          0.132
  **S8S8 reduce_range**      99141  0.033-035  95-96k    99.64   2.46          **0**
  U8S8 full-range            99087  0.025-032  90-96k    99.64   2.46          0.132
  U8S8 reduce_range          99087  0.026-034  93-95k    99.64   2.46          0
  U8U8 full-range            99389  0.045      36k       99.64   2.46          0.132
  ========================  ======  =========  ========  ======  ============  ==========

  (two runs each; b1 timings of ~30 us are noisy.) U8U8, which onnxruntime suggests against
  saturation, is 2.6x slower at batch 64 here and still differs; S8S8 stays the default
  because ARM's kernels want it and x86 converts it at no measured cost. The 7th weight bit
  cost nothing measurable on digits; the accuracy gate still judges every model.
* MinMax calibration: Entropy and Percentile (99.999) were within noise of it (relMSE
  7.6-8.7e-5 for all three, accuracy identical to +-0.2 points) and cost more; they are
  available for models with long-tailed activations.
* The result is compacted: shape annotations (``value_info``), all-zero int32 bias zero points
  and long internal tensor names are dropped, which matters for small models (0.39x -> 0.33x of
  the fp32 size for the 14k-parameter CNN, 0.28x -> 0.27x at 90k); graph input/output and node
  names are kept. onnxruntime builds the same fused graph from it.

Node names everywhere (``exclude_nodes``, :func:`quantizable_nodes`) refer to the
*pre-processed* graph, which keeps the exported node names for the ops it does not fuse away.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from model_packager.errors import PackagerError

__all__ = [
    "ArrayCalibrationReader",
    "CalibrateMethod",
    "IntType",
    "QuantizationError",
    "StaticInt8Quantizer",
    "preprocess_for_quantization",
    "quantizable_nodes",
    "quantize_dynamic_int8",
    "quantize_int8",
    "weight_range",
]

CalibrateMethod = Literal["minmax", "percentile", "entropy"]
IntType = Literal["int8", "uint8"]
_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# Ops whose quantization is a choice: they quantize their own inputs (and weights) whenever they
# are quantized. Followers (Relu, Clip, MaxPool, Reshape, Flatten, Transpose, ...) only carry an
# already-quantized input through, so excluding one of them never changes anything on its own.
_ANCHOR_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "Softmax",
        "LeakyRelu", "GlobalAveragePool", "Concat", "Where", "Resize", "Pad", "Split", "Gather",
        "GatherElements", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
        "ArgMax", "CumSum",
    }
)  # fmt: skip
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})


class QuantizationError(PackagerError, RuntimeError):
    """Quantization was refused or failed."""


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds ``array`` (model-ready float32 ``[N, ...]``) in batches to the calibrator."""

    def __init__(
        self, array: npt.NDArray[np.float32], *, input_name: str, batch_size: int = 32
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.array = np.ascontiguousarray(array, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self._start, self._end = 0, len(self.array)
        self._position = 0

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        if self._position >= self._end:
            return None
        stop = min(self._position + self.batch_size, self._end)
        batch = self.array[self._position : stop]
        self._position = stop
        return {self.input_name: batch}

    def __len__(self) -> int:
        return len(self.array)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self.array))
        self._position = self._start

    def rewind(self) -> None:
        self._position = self._start


def preprocess_for_quantization(onnx_bytes: bytes) -> bytes:
    """``quant_pre_process``: shape inference and graph optimisation ahead of quantization."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-quant-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "pre.onnx"
        src.write_bytes(onnx_bytes)
        try:
            quant_pre_process(str(src), str(dst))
        except Exception as exc:
            raise QuantizationError(f"quantization pre-processing failed: {exc}") from exc
        return dst.read_bytes()


def _anchor_nodes(proto: onnx.ModelProto) -> list[str]:
    return [n.name for n in proto.graph.node if n.op_type in _ANCHOR_OPS and n.name]


def quantizable_nodes(onnx_bytes: bytes) -> list[str]:
    """Names (in the pre-processed graph) of the nodes static quantization touches by choice:
    Conv, ConvTranspose, Gemm, MatMul, Add, Mul, ... in graph order. Pass any of them as
    ``exclude_nodes`` to keep it in float."""
    return _anchor_nodes(onnx.load_from_string(preprocess_for_quantization(onnx_bytes)))


class StaticInt8Quantizer:
    """Pre-processes and calibrates once, then quantizes as often as asked (different node
    exclusions reuse the calibration ranges through onnxruntime's calibration cache).

    Use as a context manager, or call :meth:`close`, to remove its temporary files.
    ``reduce_range`` (default on): 7-bit weights, safe for every CPU's int8 kernels;
    ``activation_type`` / ``weight_type``: ``"int8"`` (default, S8S8) or ``"uint8"``.
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        *,
        calibration: npt.NDArray[np.float32],
        input_name: str,
        per_channel: bool = True,
        calibrate_method: CalibrateMethod = "minmax",
        batch_size: int = 32,
        reduce_range: bool = True,
        activation_type: IntType = "int8",
        weight_type: IntType = "int8",
    ) -> None:
        if calibrate_method not in _METHODS:
            raise ValueError(f"calibrate_method must be one of {sorted(_METHODS)}")
        if activation_type not in _TYPES or weight_type not in _TYPES:
            raise ValueError(f"activation_type and weight_type must be one of {sorted(_TYPES)}")
        calibration = np.asarray(calibration)
        if calibration.ndim < 1 or len(calibration) == 0:
            raise ValueError("calibration needs at least one sample")
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeloop-quant-")
        self._dir = Path(self._tmp.name)
        self.preprocessed = preprocess_for_quantization(onnx_bytes)
        (self._dir / "pre.onnx").write_bytes(self.preprocessed)
        proto = onnx.load_from_string(self.preprocessed)
        inputs = [i.name for i in proto.graph.input]
        if input_name not in inputs:
            raise ValueError(f"input {input_name!r} is not a graph input (inputs: {inputs})")
        self.nodes: list[str] = _anchor_nodes(proto)
        self.op_types: dict[str, str] = {n.name: n.op_type for n in proto.graph.node}
        self._calibration = calibration.astype(np.float32, copy=False)
        self._input_name = input_name
        self._per_channel = per_channel
        self._method = _METHODS[calibrate_method]
        self._batch_size = batch_size
        self._reduce_range = reduce_range
        self._activation_type = _TYPES[activation_type]
        self._weight_type = _TYPES[weight_type]
        self._cache = self._dir / "calibration.json"
        self._count = 0

    def __enter__(self) -> StaticInt8Quantizer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def quantize(
        self, *, exclude_nodes: Sequence[str] = (), only_nodes: Sequence[str] | None = None
    ) -> bytes:
        """The int8 QDQ model with ``exclude_nodes`` kept in float; ``only_nodes`` (if given)
        restricts quantization to those nodes (used to measure one node's sensitivity)."""
        unknown = sorted(set(exclude_nodes).union(only_nodes or ()) - set(self.op_types))
        if unknown:
            raise ValueError(f"unknown node names {unknown}; see quantizable_nodes()")
        self._count += 1
        out = self._dir / f"q{self._count}.onnx"
        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if self._method is CalibrationMethod.Percentile:
            extra["CalibPercentile"] = 99.999
        reader = ArrayCalibrationReader(
            self._calibration, input_name=self._input_name, batch_size=self._batch_size
        )
        with _quiet():
            quantize_static(
                str(self._dir / "pre.onnx"),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=self._activation_type,
                weight_type=self._weight_type,
                per_channel=self._per_channel,
                reduce_range=self._reduce_range,
                nodes_to_exclude=list(exclude_nodes),
                nodes_to_quantize=list(only_nodes) if only_nodes is not None else None,
                calibrate_method=self._method,
                calibration_cache_path=str(self._cache),
                extra_options=extra,
            )
        proto = onnx.load(str(out))
        out.unlink()
        _compact(proto)
        return proto.SerializeToString()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The Entropy / Percentile calibrators print progress to stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def quantize_int8(
    onnx_bytes: bytes,
    *,
    calibration: npt.NDArray[np.float32],
    input_name: str,
    exclude_nodes: Sequence[str] = (),
    per_channel: bool = True,
    calibrate_method: CalibrateMethod = "minmax",
    reduce_range: bool = True,
) -> bytes:
    """Static int8 QDQ quantization calibrated on ``calibration`` (model-ready float32 inputs,
    a few hundred representative samples). ``exclude_nodes`` stay in float. ``reduce_range``
    (the default) keeps weights in [-64, 64] so x86 kernels without VNNI cannot saturate (see
    the module docstring); turn it off only for a model that runs on ARM or VNNI alone."""
    with StaticInt8Quantizer(
        onnx_bytes,
        calibration=calibration,
        input_name=input_name,
        per_channel=per_channel,
        calibrate_method=calibrate_method,
        reduce_range=reduce_range,
    ) as quantizer:
        return quantizer.quantize(exclude_nodes=exclude_nodes)


def quantize_dynamic_int8(onnx_bytes: bytes) -> bytes:
    """Dynamic quantization (int8 weights, activations quantized at run time) for models
    without convolutions (MLPs, RNNs; the 3-layer digits MLP ran batch 64 in 0.59x the fp32
    time at 0.27x the size). Refuses convolutional models: onnxruntime runs them as ConvInteger,
    measured 3-8x slower than fp32 on CPU (3.1-4.3x at batch 1, 5.8-7.8x at batch 64 on the
    digits CNNs); use :func:`quantize_int8`."""
    pre = preprocess_for_quantization(onnx_bytes)
    convs = [n.name for n in onnx.load_from_string(pre).graph.node if n.op_type in _CONV_OPS]
    if convs:
        raise QuantizationError(
            f"dynamic quantization refused: the model has convolutions ({', '.join(convs[:3])}"
            f"{', ...' if len(convs) > 3 else ''}), which onnxruntime runs as ConvInteger, "
            "3-8x slower than fp32; use static quantization (quantize_int8) with calibration data"
        )
    with tempfile.TemporaryDirectory(prefix="edgeloop-quant-") as tmp:
        src, dst = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(pre)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False)
        proto = onnx.load(str(dst))
    _compact(proto)
    return proto.SerializeToString()


def _compact(proto: onnx.ModelProto) -> None:
    """Drop what a device does not need; semantics unchanged (see the module docstring)."""
    graph = proto.graph
    del graph.value_info[:]
    initializers = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3:
            x, zp = initializers.get(node.input[0]), initializers.get(node.input[2])
            if (
                x is not None
                and zp is not None
                and x.data_type == onnx.TensorProto.INT32
                and not onnx.numpy_helper.to_array(zp).any()
            ):
                del node.input[2]  # optional; int32 zero point defaults to 0
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    has_subgraphs = any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for a in node.attribute
    )
    if has_subgraphs:
        return
    keep = {v.name for v in [*graph.input, *graph.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            candidate = f"t{len(names):x}"
            while candidate in keep:
                candidate = "_" + candidate
            names[name] = candidate
        return names[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]


def weight_range(onnx_bytes: bytes) -> int:
    """The largest ``|w - zero point|`` over the model's quantized weights (8-bit integer
    initializers of more than one element): 64 or less means no x86 int8 kernel can
    saturate on it (``vpmaddubsw``: 255 x (64 + 64) < 2**15); 0 for a float model."""
    proto = onnx.load_from_string(onnx_bytes)
    inits = {i.name: i for i in proto.graph.initializer}
    widest = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        weight = inits[node.input[0]]
        if weight.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            continue
        values = onnx.numpy_helper.to_array(weight).astype(np.int32)
        if values.size <= 1:
            continue
        if len(node.input) > 2 and node.input[2] in inits:
            zero_point = onnx.numpy_helper.to_array(inits[node.input[2]]).astype(np.int32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if zero_point.size > 1:
                shape = [1] * values.ndim
                shape[axis] = zero_point.size
                zero_point = zero_point.reshape(shape)
            values = values - zero_point
        widest = max(widest, int(np.abs(values).max()))
    return widest
