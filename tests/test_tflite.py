"""TFLite conversion (fp32, full-integer int8) and evaluation with the LiteRT runtime."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="litert-torch is not installed (edgeloop[tflite])")

import torch
from torch import nn

from model_packager import litert
from model_packager.tflite import (
    TFLiteUnavailable,
    convert_fp32,
    convert_int8,
    describe_tflite,
    run_tflite,
    tflite_available,
)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def conv_autoencoder() -> nn.Module:
    """A conv autoencoder on (3, 64) windows, all layers with an int8 pattern."""
    return nn.Sequential(
        nn.Conv1d(3, 8, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(8, 4, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(4, 8, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(8, 3, 5, padding=2),
    )


def mlp_labels(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0).long()


def cnn_labels(x: torch.Tensor) -> torch.Tensor:
    quadrants = x[:, 0].reshape(-1, 2, 4, 2, 4).mean(dim=(2, 4)).flatten(1)
    return quadrants.argmax(dim=1)


def ae_data(n: int, generator: torch.Generator) -> torch.Tensor:
    t = torch.linspace(0, 6.28, 64)
    phase = torch.rand(n, 3, 1, generator=generator) * 6.28
    noise = 0.1 * torch.randn(n, 3, 64, generator=generator)
    return torch.sin(t + phase) + noise


@dataclass
class Case:
    model: nn.Module
    kind: str  # "classifier" or "autoencoder"
    make: Callable[[int], np.ndarray]
    fp32: bytes
    int8: bytes


def _train(
    model: nn.Module,
    make: Callable[[int], torch.Tensor],
    target: Callable[[torch.Tensor], torch.Tensor] | None,
) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        x = make(64)
        out = model(x)
        loss = (
            nn.functional.mse_loss(out, x)
            if target is None
            else nn.functional.cross_entropy(out, target(x))
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _case(name: str) -> Case:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model: nn.Module
    if name == "mlp":
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
        make = lambda n: torch.randn(n, 8, generator=gen)  # noqa: E731
        model, target = _train(model, make, mlp_labels), "classifier"
    elif name == "cnn":
        make = lambda n: torch.randn(n, 1, 8, 8, generator=gen)  # noqa: E731
        model, target = _train(SmallCNN(), make, cnn_labels), "classifier"
    else:
        make = lambda n: ae_data(n, gen)  # noqa: E731
        model, target = _train(conv_autoencoder(), make, None), "autoencoder"

    def make_np(n: int) -> np.ndarray:
        return make(n).numpy().astype(np.float32)

    example = make_np(1)
    return Case(
        model=model,
        kind=target,
        make=make_np,
        fp32=convert_fp32(model, example_input=example),
        int8=convert_int8(model, example_input=example, calibration=make_np(256)),
    )


@pytest.fixture(scope="module", params=["mlp", "cnn", "ae"])
def case(request: pytest.FixtureRequest) -> Case:
    return _case(str(request.param))


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def test_available() -> None:
    assert tflite_available()


def test_fp32_matches_torch(case: Case) -> None:
    x = case.make(37)
    out = run_tflite(case.fp32, x)
    expected = _torch(case.model, x)
    assert out.shape == expected.shape
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_fp32_description(case: Case) -> None:
    info = describe_tflite(case.fp32)
    assert info["batch_size"] == 1
    assert info["size_bytes"] == len(case.fp32)
    assert [d["dtype"] for d in info["inputs"] + info["outputs"]] == ["float32", "float32"]
    assert info["inputs"][0]["quantization"] is None
    assert info["inputs"][0]["shape"][1:] == list(case.make(1).shape[1:])
    assert info["int8_weights"] == 0
    assert not info["full_integer"]


def test_int8_is_full_integer(case: Case) -> None:
    info = describe_tflite(case.int8)
    layers = sum(isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) for m in case.model.modules())
    assert info["full_integer"], info["tensors"]
    assert info["int8_weights"] >= layers
    assert info["per_channel_weights"] >= layers
    assert "float32" not in info["weights"]
    for io in info["inputs"] + info["outputs"]:
        assert io["dtype"] == "int8"
        assert io["quantization"]["scale"] > 0
        assert -128 <= io["quantization"]["zero_point"] <= 127
    assert info["batch_size"] == 1
    assert len(case.int8) < len(case.fp32) or len(case.fp32) < 20_000  # tiny models: headers


def test_int8_close_to_fp32(case: Case) -> None:
    x = case.make(400)
    fp32 = run_tflite(case.fp32, x)
    int8 = run_tflite(case.int8, x)
    assert int8.shape == fp32.shape
    if case.kind == "classifier":
        agreement = float(np.mean(int8.argmax(axis=1) == fp32.argmax(axis=1)))
        assert agreement >= 0.95, agreement
    else:
        relative_mse = float(np.mean((int8 - fp32) ** 2) / np.var(fp32))
        assert relative_mse < 0.02, relative_mse


def test_int8_io_quantization_by_hand(case: Case) -> None:
    """What a device does: quantize the input itself, dequantize the output itself."""
    interpreter = litert._interpreter(case.int8)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    info = describe_tflite(case.int8)
    scale, zero = (info["inputs"][0]["quantization"][k] for k in ("scale", "zero_point"))
    x = case.make(1)
    q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    o_scale, o_zero = (info["outputs"][0]["quantization"][k] for k in ("scale", "zero_point"))
    by_hand = (interpreter.get_tensor(out["index"]).astype(np.float32) - o_zero) * o_scale
    np.testing.assert_allclose(by_hand, run_tflite(case.int8, x), atol=1e-6)


@pytest.fixture(scope="module")
def batch4() -> tuple[nn.Module, bytes, bytes]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    example = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    calibration = np.random.default_rng(1).standard_normal((101, 8)).astype(np.float32)
    fp32 = convert_fp32(model, example_input=example)
    int8 = convert_int8(model, example_input=example, calibration=calibration)
    return model, fp32, int8


@pytest.mark.parametrize("n", [0, 1, 4, 10])
def test_run_handles_rows_not_divisible_by_batch(
    batch4: tuple[nn.Module, bytes, bytes], n: int
) -> None:
    model, fp32, int8 = batch4
    assert describe_tflite(fp32)["batch_size"] == 4
    assert describe_tflite(int8)["batch_size"] == 4
    x = np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32)
    out = run_tflite(fp32, x)
    assert out.shape == (n, 2)
    np.testing.assert_allclose(out, _torch(model, x), atol=1e-4, rtol=0)
    q = run_tflite(int8, x)
    assert q.shape == (n, 2)
    if n:
        assert float(np.abs(q - out).max()) < 0.1 * float(np.abs(out).max()) + 0.05


class BatchOneOnly(nn.Module):
    """Bakes batch 1 into its graph: calibration must fall back to row-by-row export."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.reshape(1, 16)))


def test_int8_calibrates_models_that_fix_the_batch() -> None:
    torch.manual_seed(5)
    model = BatchOneOnly().train()
    rng = np.random.default_rng(5)
    calibration = rng.uniform(-1, 1, (33, 4, 4)).astype(np.float32)
    int8 = convert_int8(model, example_input=calibration[:1], calibration=calibration)
    assert model.training  # restored
    info = describe_tflite(int8)
    assert info["full_integer"]
    assert info["int8_weights"] >= 1
    x = rng.uniform(-1, 1, (20, 4, 4)).astype(np.float32)
    expected = np.concatenate([_torch(model.eval(), row[None]) for row in x])
    assert float(np.abs(run_tflite(int8, x) - expected).max()) < 0.05


def test_run_rejects_wrong_shapes(case: Case) -> None:
    with pytest.raises(ValueError, match="inputs must have shape"):
        run_tflite(case.fp32, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="batch must be at least 1"):
        run_tflite(case.fp32, case.make(2), batch=0)


def test_convert_int8_validates_calibration() -> None:
    model = nn.Sequential(nn.Linear(8, 2))
    example = np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError, match="calibration rows have shape"):
        convert_int8(model, example_input=example, calibration=np.zeros((5, 7), np.float32))
    with pytest.raises(ValueError, match="calibration must be a batch"):
        convert_int8(model, example_input=example, calibration=np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        convert_int8(model, example_input=example, calibration=np.full((3, 8), np.nan))


def test_convert_restores_training_flag() -> None:
    model = nn.Sequential(nn.Linear(8, 2), nn.Dropout(0.5)).train()
    convert_fp32(model, example_input=np.zeros((1, 8), np.float32))
    assert model.training


def test_unavailable_converter_says_how_to_enable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    assert not tflite_available()
    with pytest.raises(TFLiteUnavailable, match=r"pip install 'edgeloop\[tflite\]'"):
        convert_fp32(nn.Linear(8, 2), example_input=np.zeros((1, 8), np.float32))
    with pytest.raises(TFLiteUnavailable, match="litert-torch"):
        convert_int8(
            nn.Linear(8, 2),
            example_input=np.zeros((1, 8), np.float32),
            calibration=np.zeros((4, 8), np.float32),
        )


def test_unavailable_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    assert not tflite_available()
    with pytest.raises(TFLiteUnavailable, match=r"edgeloop\[agent\]"):
        run_tflite(b"not a model", np.zeros((1, 8), np.float32))


def test_garbage_bytes_are_rejected() -> None:
    with pytest.raises(ValueError, match="not a loadable TFLite model"):
        describe_tflite(b"definitely not a flatbuffer")
