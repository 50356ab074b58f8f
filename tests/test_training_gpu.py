"""Training on a CUDA device: the loop, torchrun with NCCL, and export of a GPU-trained model.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``pytest tests/test_training_gpu.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hub.datasets.sources import load_source
from hub.datasets.splits import split_records
from hub.specs import get_spec
from hub.training.artifact import load_model
from hub.training.distributed import history_path, load_training_npz, write_training_npz
from hub.training.loop import TrainConfig, fit, predict
from model_packager.onnx_export import export_onnx

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    records = load_source("sklearn:digits")
    return split_records(records, fractions={"train": 0.8, "val": 0.2}, salt="digits")


def test_fit_on_cuda_trains_and_hands_back_a_cpu_model(digits: dict) -> None:
    spec = get_spec("digits-cnn")
    train, val = digits["train"], digits["val"]
    preprocess = spec.preprocess(train)
    model = spec.build(params=spec.params(), num_outputs=spec.num_outputs(train))
    seen: list[torch.device] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].device))
    config = TrainConfig(epochs=12, batch_size=64, lr=3e-3, device="cuda", seed=1)
    history = fit(
        spec=spec,
        model=model,
        train_x=preprocess.apply(train.features),
        train_y=train.labels,
        val_x=preprocess.apply(val.features),
        val_y=val.labels,
        config=config,
    )
    assert seen and all(d.type == "cuda" for d in seen)  # the batches ran on the GPU
    assert all(p.device.type == "cpu" for p in model.parameters())  # handed back on the CPU
    assert len(history) == 12
    x_val = preprocess.apply(val.features)
    accuracy = float(
        (predict(model, x_val, device=torch.device("cpu")).argmax(1) == val.labels).mean()
    )
    assert accuracy > 0.9

    onnx_bytes = export_onnx(model, input_shape=tuple(x_val.shape[1:]))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x_val[:64]})[0]
    eager = predict(model, x_val[:64], device=torch.device("cpu"))
    np.testing.assert_allclose(out, eager, rtol=1e-3, atol=1e-3)


def test_torchrun_uses_nccl_on_the_gpu(digits: dict, tmp_path: Path) -> None:
    data = tmp_path / "digits.npz"
    write_training_npz(data, train=digits["train"], val=digits["val"])
    out = tmp_path / "model.bin"
    env = {k: v for k, v in os.environ.items() if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK"}}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        "-m",
        "hub.training.distributed",
        "--spec",
        "digits-mlp",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "8",
        "--seed",
        "3",
        "--param",
        "hidden=32",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(history_path(out).read_text())
    assert summary["backend"] == "nccl"
    trained = load_model(out.read_bytes())
    _, val = load_training_npz(data)
    outputs = predict(
        trained.model, trained.preprocess.apply(val.features), device=torch.device("cpu")
    )
    assert val.labels is not None
    assert float((outputs.argmax(axis=1) == val.labels).mean()) > 0.8
