"""Static int8 quantization on small graphs built with onnx.helper (no torch needed)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_packager.gate import evaluate_onnx, kernel_deviation
from model_packager.quantize import (
    ArrayCalibrationReader,
    QuantizationError,
    StaticInt8Quantizer,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_int8,
    weight_range,
)


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:]))
    value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    return numpy_helper.from_array(value.astype(np.float32), name)


def _bias(rng: np.random.Generator, name: str, size: int) -> onnx.TensorProto:
    return numpy_helper.from_array((0.1 * rng.standard_normal(size)).astype(np.float32), name)


def conv_model(seed: int = 0) -> bytes:
    """[N,1,8,8] -> conv 1->32 -> relu -> conv 32->64 -> relu -> GAP -> flatten -> gemm 64->10
    (~20k parameters, so the weights dominate the file)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], name="fc", transB=1),
    ]
    inits = [
        _init(rng, "c1.w", (32, 1, 3, 3)),
        _bias(rng, "c1.b", 32),
        _init(rng, "c2.w", (64, 32, 3, 3)),
        _bias(rng, "c2.b", 64),
        _init(rng, "fc.w", (10, 64)),
        _bias(rng, "fc.b", 10),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _finish(graph)


def mlp_model(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["output"], name="mm2"),
    ]
    inits = [_init(rng, "w1", (16, 32)), _init(rng, "w2", (32, 4))]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    return _finish(graph)


def run(model: bytes, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


@pytest.fixture(scope="module")
def fp32() -> bytes:
    return conv_model()


@pytest.fixture(scope="module")
def data() -> npt.NDArray[np.float32]:
    return np.random.default_rng(1).standard_normal((160, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def int8(fp32: bytes, data: npt.NDArray[np.float32]) -> bytes:
    return quantize_int8(fp32, calibration=data[:96], input_name="input")


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _weight_dequantizers(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(DequantizeLinear node, its int8 initializer input) for every quantized weight."""
    inits = _initializers(model)
    return [
        (node, inits[node.input[0]])
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in inits
        and inits[node.input[0]].data_type == TensorProto.INT8
    ]


def test_int8_model_has_qdq_nodes_and_int8_weights(int8: bytes) -> None:
    model = onnx.load_from_string(int8)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weights = sorted(tuple(t.dims) for _, t in _weight_dequantizers(model))
    assert weights == sorted([(32, 1, 3, 3), (64, 32, 3, 3), (10, 64)])
    # no float copy of a weight is left behind
    floats = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    assert all(int(np.prod(t.dims)) <= 64 for t in floats)  # scales only
    # activations are int8 too (S8S8)
    activation_zero_points = [
        _initializers(model)[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"
    ]
    assert activation_zero_points
    assert all(zp.data_type == TensorProto.INT8 for zp in activation_zero_points)


def test_int8_is_much_smaller(fp32: bytes, int8: bytes) -> None:
    assert len(int8) < 0.35 * len(fp32)


def test_int8_model_close_to_fp32(fp32: bytes, int8: bytes, data: npt.NDArray[np.float32]) -> None:
    """A claim about the model, not about this CPU: its own QDQ arithmetic (Q/DQ in float
    around float ops, onnxruntime's fusions off: the same on every CPU) stays near fp32."""
    x = data[96:]  # not seen by calibration
    expected = run(fp32, x)
    actual = evaluate_onnx(int8, inputs=x, fused=False)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, atol=0.05 * scale, rtol=0)
    rel_mse = float(np.mean((actual - expected) ** 2) / np.mean(expected**2))
    assert rel_mse < 2e-3
    assert np.mean(actual.argmax(1) == expected.argmax(1)) >= 0.9


def test_int8_weights_cannot_saturate_any_cpu_kernel(
    fp32: bytes, int8: bytes, data: npt.NDArray[np.float32]
) -> None:
    """x86 int8 kernels without VNNI add pairs of u8 x s8 products into a saturating int16
    (vpmaddubsw): 255 x (|w1| + |w2|) must stay below 2**15, so |w| <= 64 (7-bit weights)."""
    assert weight_range(int8) <= 64
    assert 255 * (64 + 64) < 2**15 - 1
    assert weight_range(fp32) == 0
    # full-range weights are what saturated (an AMD EPYC without VNNI was off by 0.13)
    full = quantize_int8(
        fp32,
        calibration=data[:32],
        input_name="input",
        reduce_range=False,
    )
    assert weight_range(full) > 64


def test_fused_kernels_compute_the_model(int8: bytes, data: npt.NDArray[np.float32]) -> None:
    """On this CPU, onnxruntime's fused int8 kernels (QLinearConv, QGemm) agree with the
    model's own arithmetic: what the gate measures on the hub is what devices run."""
    x = data[96:]
    reference = evaluate_onnx(int8, inputs=x, fused=False)
    scale = float(np.abs(reference).max())
    assert kernel_deviation(int8, inputs=x) <= 0.01 * scale


def test_int8_keeps_io_and_dynamic_batch(int8: bytes, data: npt.NDArray[np.float32]) -> None:
    model = onnx.load_from_string(int8)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert not model.graph.value_info  # compacted
    for n in (1, 64):
        assert run(int8, data[:n]).shape == (n, 10)


@pytest.mark.parametrize(("per_channel", "channels"), [(True, {32, 64, 10}), (False, {1})])
def test_weight_scales_per_channel(
    fp32: bytes, data: npt.NDArray[np.float32], per_channel: bool, channels: set[int]
) -> None:
    model = onnx.load_from_string(
        quantize_int8(fp32, calibration=data[:64], input_name="input", per_channel=per_channel)
    )
    inits = _initializers(model)
    sizes = set()
    for node, weight in _weight_dequantizers(model):
        scale = numpy_helper.to_array(inits[node.input[1]])
        sizes.add(scale.size)
        if per_channel:
            assert scale.shape == (weight.dims[0],)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            assert axis == 0  # output channels of Conv weights and of transB Gemm weights
            assert len(np.unique(scale)) > 1
    assert sizes == channels


def test_quantizable_nodes_lists_the_compute_nodes(fp32: bytes) -> None:
    assert quantizable_nodes(fp32) == ["conv1", "conv2", "gap", "fc"]


def test_excluded_node_stays_float(fp32: bytes, data: npt.NDArray[np.float32]) -> None:
    model = onnx.load_from_string(
        quantize_int8(fp32, calibration=data[:64], input_name="input", exclude_nodes=["conv2"])
    )
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    producers = {o: n for n in model.graph.node for o in n.output}
    weight = conv2.input[1]
    # its weight is a float initializer, not the output of a DequantizeLinear
    assert weight not in producers
    assert _initializers(model)[weight].data_type == TensorProto.FLOAT
    dims = sorted(tuple(t.dims) for _, t in _weight_dequantizers(model))
    assert dims == sorted([(32, 1, 3, 3), (10, 64)])


def test_unknown_node_and_input_name_are_refused(
    fp32: bytes, data: npt.NDArray[np.float32]
) -> None:
    with pytest.raises(ValueError, match="unknown node names"):
        quantize_int8(fp32, calibration=data[:8], input_name="input", exclude_nodes=["nope"])
    with pytest.raises(ValueError, match="not a graph input"):
        quantize_int8(fp32, calibration=data[:8], input_name="x")
    with pytest.raises(ValueError, match="at least one sample"):
        quantize_int8(fp32, calibration=data[:0], input_name="input")


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_other_calibration_methods(fp32: bytes, data: npt.NDArray[np.float32], method: str) -> None:
    with StaticInt8Quantizer(
        fp32,
        calibration=data[:64],
        input_name="input",
        calibrate_method=method,  # type: ignore[arg-type]
    ) as quantizer:
        int8 = quantizer.quantize()
        again = quantizer.quantize(exclude_nodes=["fc"])  # reuses the calibration cache
    expected, actual = run(fp32, data[96:]), run(int8, data[96:])
    assert np.mean((actual - expected) ** 2) / np.mean(expected**2) < 1e-2
    assert again != int8


def test_dynamic_quantization_refuses_conv_models(fp32: bytes) -> None:
    with pytest.raises(
        QuantizationError, match=r"convolutions \(conv1, conv2\).*ConvInteger, 3-8x slower"
    ):
        quantize_dynamic_int8(fp32)


def test_dynamic_quantization_of_an_mlp() -> None:
    fp32 = mlp_model()
    int8 = quantize_dynamic_int8(fp32)
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    x = np.random.default_rng(2).standard_normal((32, 16)).astype(np.float32)
    expected, actual = run(fp32, x), run(int8, x)
    np.testing.assert_allclose(actual, expected, atol=0.05 * float(np.abs(expected).max()))


def test_array_calibration_reader_batches() -> None:
    array = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    reader = ArrayCalibrationReader(array, input_name="x", batch_size=4)
    batches = list(reader)
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), array)
    assert reader.get_next() is None and len(reader) == 10
    reader.set_range(start_index=2, end_index=7)
    assert [b["x"][:, 0].tolist() for b in reader] == [[6, 9, 12, 15], [18]]
    reader.rewind()
    assert reader.get_next() is not None
    with pytest.raises(ValueError):
        ArrayCalibrationReader(array, input_name="x", batch_size=0)
