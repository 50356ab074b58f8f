"""Distributed (DDP, gloo on CPU) training through torchrun, and the same entry point alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hub.datasets.sources import load_source
from hub.datasets.splits import split_records
from hub.training.artifact import load_model
from hub.training.distributed import (
    history_path,
    load_training_npz,
    shard_indices,
    write_training_npz,
)
from hub.training.loop import predict

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = load_source("sklearn:digits")
    splits = split_records(records, fractions={"train": 0.8, "val": 0.2}, salt="digits")
    path = tmp_path_factory.mktemp("ddp") / "digits.npz"
    write_training_npz(path, train=splits["train"], val=splits["val"])
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK"}}
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on CPU even on a GPU machine
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _args(data: Path, out: Path, epochs: int) -> list[str]:
    return [
        "-m",
        "hub.training.distributed",
        "--spec",
        "digits-mlp",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--seed",
        "3",
        "--param",
        "hidden=32",
        "--param",
        "dropout=0.0",
    ]


def _val_accuracy(model_path: Path, data: Path) -> float:
    trained = load_model(model_path.read_bytes())
    _, val = load_training_npz(data)
    outputs = predict(
        trained.model, trained.preprocess.apply(val.features), device=torch.device("cpu")
    )
    assert val.labels is not None
    return float((outputs.argmax(axis=1) == val.labels).mean() * 100)


def test_write_and_load_npz_round_trip(digits_npz: Path) -> None:
    train, val = load_training_npz(digits_npz)
    assert train.feature_shape == (8, 8) and val.feature_shape == (8, 8)
    assert train.label_names == tuple(str(d) for d in range(10))
    assert train.labels is not None and len(train.labels) == len(train)
    assert len(train) + len(val) == 1797


def test_shards_cover_every_index_and_are_equal_sized() -> None:
    for n, world in [(10, 3), (12, 4), (7, 1)]:
        shards = [shard_indices(n, epoch=2, seed=1, rank=r, world=world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1
        assert set(torch.cat(shards).tolist()) == set(range(n))
    again = shard_indices(10, epoch=2, seed=1, rank=0, world=3)
    assert torch.equal(again, shard_indices(10, epoch=2, seed=1, rank=0, world=3))
    assert not torch.equal(again, shard_indices(10, epoch=3, seed=1, rank=0, world=3))


def test_torchrun_two_ranks_train_identical_models(digits_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *_args(digits_npz, out, 6)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sums = [Path(f"{out}.rank{r}.sha256").read_text().strip() for r in range(2)]
    assert sums[0] == sums[1] and len(sums[0]) == 64
    summary = json.loads(history_path(out).read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["checksum"] == sums[0]
    assert len(summary["epochs"]) == 6
    assert summary["epochs"][-1]["train_loss"] < summary["epochs"][0]["train_loss"]
    assert "accuracy" in summary["epochs"][-1]["val_metrics"]
    assert _val_accuracy(out, digits_npz) > 80.0


def test_single_process_without_torchrun(digits_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "single.pt"
    cmd = [sys.executable, *_args(digits_npz, out, 4)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(history_path(out).read_text())
    assert summary["world_size"] == 1
    trained = load_model(out.read_bytes())
    assert trained.labels == [str(d) for d in range(10)]
    assert _val_accuracy(out, digits_npz) > 80.0
    assert np.isfinite(summary["epochs"][-1]["train_loss"])


def test_service_train_with_two_processes_tracks_and_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train(nproc=2)`` runs torchrun (gloo) and goes on like a one-process run."""
    from sqlmodel import select

    from hub.core.artifacts import FileArtifactStore
    from hub.core.db import make_engine, session_scope
    from hub.datasets import service as datasets
    from hub.tables import RunMetric, create_all
    from hub.training.service import train

    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on CPU even on a GPU machine
    outcome = train(
        engine,
        store,
        spec_name="digits-mlp",
        dataset="digits@1",
        params={"epochs": 3, "hidden": 32, "dropout": 0.0},
        nproc=2,
    )
    assert outcome.run.params["nproc"] == 2
    assert outcome.model_version is not None and outcome.model_version.version == 1
    assert outcome.metrics["test_accuracy"] > 80  # a working model, evaluated on the test split
    with session_scope(engine) as s:
        steps = s.exec(select(RunMetric).where(RunMetric.run_id == outcome.run.id)).all()
    assert sorted({m.step for m in steps if m.key == "train_loss"}) == [1, 2, 3]
