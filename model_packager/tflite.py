"""TFLite variants of a trained model: fp32 and full-integer int8, and their evaluation.

Conversion uses litert-torch (torch -> TFLite without TensorFlow), an optional extra
(``pip install 'edgeloop[tflite]'``); it is imported lazily, so importing this module needs
neither it nor torch. :func:`run_tflite` and :func:`describe_tflite` need only the LiteRT
runtime (``ai-edge-litert``, falling back to ``tflite-runtime``), as a device has.

Decisions, checked against litert-torch 0.10.0:

* **Batch**: the converted model has a *fixed* batch dimension, ``example_input.shape[0]``
  (pass a batch of 1 for devices). litert-torch 0.10.0 fails to lower a dynamic batch
  dimension (``dynamic_shapes``) for Linear, Conv2d and Conv1d models alike, and the default
  XNNPACK delegate refuses to resize static models, so :func:`run_tflite` loops over the
  rows in chunks of the model's batch and zero-pads the last chunk.
* **int8 I/O**: :func:`convert_int8` yields int8 weights (per-channel symmetric),
  int8 activations (per-tensor affine, calibrated) *and* int8 input/output tensors. A
  device quantizes its float input as ``clip(round(x / scale) + zero_point, -128, 127)``
  and dequantizes the output as ``(q - zero_point) * scale``, with the parameters that
  :func:`describe_tflite` reports for each input and output; :func:`run_tflite` does both.
* Ops the PT2E quantizer has no int8 pattern for (e.g. ``ConvTranspose``) stay float
  between dequantize/quantize ops; ``describe_tflite(...)["full_integer"]`` is then False.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from model_packager.litert import (
    INSTALL_HINT,
    TFLiteRunner,
    TFLiteUnavailable,
    _import,
    describe_tflite,
    run_tflite,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "INSTALL_HINT",
    "TFLiteRunner",
    "TFLiteUnavailable",
    "convert_fp32",
    "convert_int8",
    "describe_tflite",
    "run_tflite",
    "tflite_available",
]

_CALIBRATION_CHUNK = 64


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tflite_available() -> bool:
    """Whether TFLite conversion can run here (a cheap check: imports nothing heavy).

    True when litert-torch, torchao and a LiteRT runtime are installed. A broken install
    still surfaces as :class:`TFLiteUnavailable` from the convert functions.
    """
    runtime = _find("ai_edge_litert.interpreter") or _find("tflite_runtime.interpreter")
    return runtime and _find("litert_torch") and _find("torchao")


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence litert-torch's progress lines (it reads this variable on each call)."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    saved = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _as_batch(array: np.ndarray, *, name: str) -> np.ndarray:
    data = np.ascontiguousarray(array, dtype=np.float32)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"{name} must be a batch of shape (N, *input_shape), got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return data


def convert_fp32(model: torch.nn.Module, *, example_input: np.ndarray) -> bytes:
    """Convert ``model`` to a float32 TFLite flatbuffer.

    ``example_input`` is a float32 batch of shape ``(B, *input_shape)``; the TFLite model's
    batch dimension is fixed at ``B`` (use ``B = 1`` for devices). The model is traced in
    eval mode (its training flag is restored afterwards).
    """
    litert_torch = _import("litert_torch", what="litert-torch")
    torch = _import("torch", what="torch")
    sample = torch.from_numpy(_as_batch(example_input, name="example_input"))
    with _eval_mode(model), torch.no_grad(), _quiet_progress():
        edge_model = litert_torch.convert(model, (sample,))
        return bytes(edge_model.model_content())


def _calibrate_dynamic(model: torch.nn.Module, sample: Any, rows: Any, quantizer: Any) -> Any:
    """Export with a dynamic batch dimension and calibrate in chunks; None if impossible."""
    torch = _import("torch", what="torch")
    quantize_pt2e = _import("torchao.quantization.pt2e.quantize_pt2e", what="torchao")
    try:
        twice = torch.cat([sample, sample]) if sample.shape[0] == 1 else sample
        batch_dim = torch.export.Dim("batch", min=1, max=1 << 16)
        exported = torch.export.export(model, (twice,), dynamic_shapes=({0: batch_dim},))
        prepared = quantize_pt2e.prepare_pt2e(exported.module(), quantizer)
        for start in range(0, len(rows), _CALIBRATION_CHUNK):
            prepared(rows[start : start + _CALIBRATION_CHUNK])
    except Exception:  # the graph specializes on the batch size
        return None
    return prepared


def _prepare_calibrated(
    model: torch.nn.Module, sample: Any, calibration: np.ndarray, quantizer: Any
) -> Any:
    """Export, insert observers and run every ``calibration`` row through them.

    Models whose graph specializes on the batch size are exported at ``sample``'s batch
    and fed chunks of that size, the last one filled up with rows from the start.
    """
    torch = _import("torch", what="torch")
    quantize_pt2e = _import("torchao.quantization.pt2e.quantize_pt2e", what="torchao")
    rows = torch.from_numpy(calibration)
    prepared = _calibrate_dynamic(model, sample, rows, quantizer)
    if prepared is not None:
        return prepared
    exported = torch.export.export(model, (sample,))
    prepared = quantize_pt2e.prepare_pt2e(exported.module(), quantizer)
    size = int(sample.shape[0])
    for start in range(0, len(rows), size):
        prepared(rows[torch.arange(start, start + size) % len(rows)])
    return prepared


def convert_int8(
    model: torch.nn.Module,
    *,
    example_input: np.ndarray,
    calibration: np.ndarray,
    per_channel: bool = True,
) -> bytes:
    """Convert ``model`` to a full-integer int8 TFLite flatbuffer (int8 I/O).

    Uses litert-torch's PT2E path: ``PT2EQuantizer`` with the static symmetric config
    (per-channel int8 weights, per-tensor int8 activations with histogram observers),
    ``prepare_pt2e``, calibration on ``calibration`` (float32 preprocessed inputs of shape
    ``(N, *input_shape)``), ``convert_pt2e`` and ``litert_torch.convert(...,
    quant_config=QuantConfig(pt2e_quantizer=...))``. Batch handling is that of
    :func:`convert_fp32`. Input/output quantization parameters: :func:`describe_tflite`.
    """
    litert_torch = _import("litert_torch", what="litert-torch")
    pt2e_quantizer = _import("litert_torch.quantize.pt2e_quantizer", what="litert-torch")
    quant_config = _import("litert_torch.quantize.quant_config", what="litert-torch")
    quantize_pt2e = _import("torchao.quantization.pt2e.quantize_pt2e", what="torchao")
    pt2e = _import("torchao.quantization.pt2e", what="torchao")
    torch = _import("torch", what="torch")
    example = _as_batch(example_input, name="example_input")
    calib = _as_batch(calibration, name="calibration")
    if calib.shape[1:] != example.shape[1:]:
        raise ValueError(
            f"calibration rows have shape {calib.shape[1:]}, the model input {example.shape[1:]}"
        )
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(
            is_per_channel=per_channel, is_dynamic=False
        )
    )
    sample = torch.from_numpy(example)
    with _eval_mode(model), torch.no_grad(), _quiet_progress():
        prepared = _prepare_calibrated(model, sample, calib, quantizer)
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        # The graph was traced in eval mode; say so (GraphModule.eval() is not allowed).
        pt2e.move_exported_model_to_eval(quantized)
        quantized.training = False
        edge_model = litert_torch.convert(
            quantized,
            (sample,),
            quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer),
        )
        return bytes(edge_model.model_content())
