"""ONNX export, parity with eager torch, and the device-side preprocessing contract."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from model_packager.onnx_export import ExportError, ParityError, check_parity, export_onnx
from model_packager.preprocess import Preprocess


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, 10),
    )
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return model.eval()


class ShapeBranch(nn.Module):
    """Takes a "fast path" for small batches. Tracing freezes the branch of the example batch
    (2 rows), so the exported graph negates the output for every batch size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 4:
            return self.linear(x)
        return -self.linear(x)


class ValueBranch(nn.Module):
    """Data-dependent Python branching: torch.export refuses it, the legacy tracer freezes it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.linear(x)
        return self.linear(x) * 2.0


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return small_cnn()


@pytest.fixture(scope="module")
def cnn_onnx(cnn: nn.Module) -> bytes:
    return export_onnx(cnn, input_shape=(1, 8, 8))


def _batch(n: int, *shape: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_export_has_a_dynamic_batch_and_runs_1_and_64(cnn: nn.Module, cnn_onnx: bytes) -> None:
    model = onnx.load_from_string(cnn_onnx)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].HasField("dim_value")
    in_dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert in_dims == [1, 8, 8]
    session = ort.InferenceSession(cnn_onnx, providers=["CPUExecutionProvider"])
    for n in (1, 64):
        x = _batch(n, 1, 8, 8)
        (out,) = session.run(None, {"input": x})
        assert out.shape == (n, 10)
        with torch.no_grad():
            np.testing.assert_allclose(out, cnn(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_export_is_one_clean_file(cnn_onnx: bytes) -> None:
    model = onnx.load_from_string(cnn_onnx)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert not any(t.external_data or t.data_location for t in model.graph.initializer)
    assert all(not n.metadata_props and not n.doc_string for n in model.graph.node)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and "Dropout" not in ops  # folded / eval mode
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 2


def test_export_restores_training_mode() -> None:
    model = small_cnn().train()
    export_onnx(model, input_shape=(1, 8, 8), exporter="torchscript")
    assert model.training


def test_export_rejects_a_bad_input_shape(cnn: nn.Module) -> None:
    with pytest.raises(ValueError, match="per-record shape"):
        export_onnx(cnn, input_shape=(1, 0, 8))


def test_torchscript_exporter_matches(cnn: nn.Module) -> None:
    legacy = export_onnx(cnn, input_shape=(1, 8, 8), exporter="torchscript")
    report = check_parity(cnn, legacy, inputs=_batch(32, 1, 8, 8))
    assert report.passed


def test_parity_passes_for_a_faithful_export(cnn: nn.Module, cnn_onnx: bytes) -> None:
    report = check_parity(cnn, cnn_onnx, inputs=_batch(128, 1, 8, 8, seed=3))
    assert report.passed and report.samples == 128
    assert report.max_abs_diff < 1e-4
    assert report.argmax_agreement == 1.0
    regression = check_parity(cnn, cnn_onnx, inputs=_batch(8, 1, 8, 8), task="regression")
    assert regression.passed and regression.argmax_agreement is None


def test_parity_fails_when_tracing_froze_a_shape_branch() -> None:
    model = ShapeBranch().eval()
    onnx_bytes = export_onnx(model, input_shape=(4,))
    x = _batch(16, 4)
    with pytest.raises(ParityError, match=r"diverges from eager torch on 16 samples") as info:
        check_parity(model, onnx_bytes, inputs=x)
    report = info.value.report
    assert report is not None and not report.passed and report.max_abs_diff > 0.1
    quiet = check_parity(model, onnx_bytes, inputs=x, raise_on_failure=False)
    assert not quiet.passed and quiet.argmax_agreement is not None
    assert quiet.argmax_agreement < 1.0


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_data_dependent_branch_refused_by_dynamo_and_caught_by_parity() -> None:
    model = ValueBranch().eval()
    with pytest.raises(ExportError, match="data-dependent"):
        export_onnx(model, input_shape=(4,))
    frozen = export_onnx(model, input_shape=(4,), exporter="torchscript")
    x = np.concatenate([_batch(8, 4) + 3.0, _batch(8, 4) - 3.0])  # both branches
    with pytest.raises(ParityError):
        check_parity(model, frozen, inputs=x, task="regression")


def test_parity_rejects_an_empty_batch(cnn: nn.Module, cnn_onnx: bytes) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        check_parity(cnn, cnn_onnx, inputs=_batch(0, 1, 8, 8))


# --- Preprocess -------------------------------------------------------------------------------


def test_preprocess_reshapes_and_standardises() -> None:
    pre = Preprocess(input_shape=[1, 8, 8], mean=8.0, scale=4.0, reshape_from=[64])
    raw = np.arange(2 * 64, dtype=np.uint8).reshape(2, 64)
    x = pre.apply(raw)
    assert x.shape == (2, 1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x.reshape(2, 64), (raw.astype(np.float64) - 8.0) / 4.0, rtol=1e-6)
    assert pre.raw_shape == (64,)


def test_preprocess_per_channel_statistics_broadcast() -> None:
    pre = Preprocess(input_shape=[3, 4], mean=[[1.0], [2.0], [3.0]], scale=[[1.0], [2.0], [4.0]])
    x = pre.apply(np.full((5, 3, 4), 5.0))
    np.testing.assert_allclose(x[0, :, 0], [4.0, 1.5, 0.5])
    assert pre.raw_shape == (3, 4)


def test_preprocess_round_trips_through_json() -> None:
    pre = Preprocess(input_shape=[3, 4], mean=[[1.0], [2.0], [3.0]], scale=2.0, reshape_from=[12])
    data = pre.model_dump(mode="json")
    assert data == {
        "input_shape": [3, 4],
        "dtype": "float32",
        "mean": [[1.0], [2.0], [3.0]],
        "scale": 2.0,
        "reshape_from": [12],
    }
    assert Preprocess.model_validate(data) == pre
    with pytest.raises(ValidationError):
        pre.scale = 3.0  # type: ignore[misc]  # frozen


def test_preprocess_rejects_wrong_batches() -> None:
    pre = Preprocess(input_shape=[1, 8, 8], reshape_from=[64])
    with pytest.raises(ValueError, match=r"\[N, 64\], got \[64\] \(add a batch axis"):
        pre.apply(np.zeros(64))
    with pytest.raises(ValueError, match=r"got \[2, 1, 8, 8\]"):
        pre.apply(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="real numbers"):
        pre.apply(np.array([["a"] * 64]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_shape": [3, 4], "mean": [1.0, 2.0, 3.0]}, "does not broadcast"),
        ({"input_shape": [3], "scale": 0.0}, "non-zero"),
        ({"input_shape": [3], "scale": [1.0, float("inf"), 1.0]}, "finite"),
        ({"input_shape": [2, 2], "reshape_from": [5]}, "has 5 values per record"),
        ({"input_shape": [0, 2]}, "positive"),
        ({"input_shape": [2], "dtype": "float16"}, "float32"),
        ({"input_shape": [2], "unknown": 1}, "Extra inputs"),
    ],
)
def test_preprocess_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Preprocess(**fields)
