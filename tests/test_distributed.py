"""Distributed (DDP, gloo on CPU) training through torchrun, on one "node" and on two (two
launchers meeting at a c10d rendezvous on loopback), and the same entry point alone."""

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
from hub.training.distributed import main as distributed_main
from hub.training.loop import predict
from tests.fixtures.ports import free_port

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


def _node(node_rank: int, port: int, data: Path, out: Path, epochs: int) -> list[str]:
    """One torchrun "node" of two, two ranks each, meeting at a c10d rendezvous on
    127.0.0.1:``port`` (node 0 hosts its store, ``is_host``): the command of
    docs/SCALE_OUT.md with loopback for the hosts."""
    return [
        str(TORCHRUN),
        "--nnodes", "2",
        "--node-rank", str(node_rank),
        "--nproc-per-node", "2",
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", "edgeloop-test",
        "--rdzv-conf", f"is_host={int(node_rank == 0)},join_timeout=120",
        "--local-addr", "127.0.0.1",
        "--max-restarts", "0",
        *_args(data, out, epochs),
    ]  # fmt: skip


def test_torchrun_two_nodes_of_two_ranks_train_one_model(digits_npz: Path, tmp_path: Path) -> None:
    """Two torchrun launchers as two nodes (c10d rendezvous on loopback), four gloo ranks:
    every rank steps on its quarter of the rows each epoch, all end with the same weights,
    and rank 0 alone writes the model and its history. (It replaced the one-node test of two
    ranks: this covers it, and the suite has no time for both.)"""
    out, port, epochs = tmp_path / "model.pt", free_port(), 3
    nodes = [
        subprocess.Popen(
            _node(rank, port, digits_npz, out, epochs),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        logs = [node.communicate(timeout=240)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)
    summary = json.loads(history_path(out).read_text())
    assert summary["world_size"] == 4 and summary["backend"] == "gloo"
    ranks = summary["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    # two launchers (one per node), each with local ranks 0 and 1
    launchers = {node.pid for node in nodes}
    by_launcher = {
        pid: sorted(r["local_rank"] for r in ranks if r["launcher_pid"] == pid) for pid in launchers
    }
    assert by_launcher == {pid: [0, 1] for pid in launchers}, ranks
    assert sorted({r["node_rank"] for r in ranks}) == [0, 1]
    assert {r["launcher_pid"] for r in ranks if r["node_rank"] == 0} != {
        r["launcher_pid"] for r in ranks if r["node_rank"] == 1
    }
    # every rank stepped on a quarter of the (padded) training rows, every epoch
    train, _ = load_training_npz(digits_npz)
    assert [r["samples"] for r in ranks] == [epochs * -(-len(train) // 4)] * 4
    # one model: the same weights on every rank; written once, by rank 0
    sums = {Path(f"{out}.rank{r}.sha256").read_text().strip() for r in range(4)}
    assert sums == {summary["checksum"]} and {r["checksum"] for r in ranks} == sums
    assert summary["written_by"]["rank"] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".sha256")) == [
        "model.history.json",
        "model.pt",
    ]
    assert len(summary["epochs"]) == epochs
    assert summary["epochs"][-1]["train_loss"] < summary["epochs"][0]["train_loss"]
    assert _val_accuracy(out, digits_npz) > 80.0


def test_single_process_without_torchrun(
    digits_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry point alone is a world of one: run in this process (no interpreter to start,
    torch already imported), so the two-node test above costs the suite less."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "single.pt"
    threads = torch.get_num_threads()
    try:
        assert distributed_main(_args(digits_npz, out, 4)[2:]) == 0
    finally:
        torch.set_num_threads(threads)  # train() takes one thread, as a rank does
    summary = json.loads(history_path(out).read_text())
    assert summary["world_size"] == 1
    assert [r["rank"] for r in summary["ranks"]] == [0] and summary["written_by"]["rank"] == 0
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
