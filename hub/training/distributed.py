"""Data-parallel training of a spec with ``torch.distributed`` (DDP), one process per rank.

Run it with torchrun (or alone: without ``WORLD_SIZE`` it is a world of one)::

    torchrun --nproc-per-node 2 -m hub.training.distributed \\
        --spec digits-mlp --data train.npz --out model.pt --epochs 10 --param hidden=64

Backend ``nccl`` when CUDA is available, else ``gloo``; one CPU thread per rank. Every epoch
the training indices are shuffled with ``seed + epoch`` (the same permutation on every rank),
padded to a multiple of the world size and dealt out ``rank::world`` (as DistributedSampler
does), so every rank takes the same number of steps. DDP averages the gradients; floating
buffers (BatchNorm statistics) are averaged across ranks after every epoch, so all ranks end
with the same model. Rank 0 evaluates on the val split, writes the model artifact
(:func:`hub.training.artifact.dump_model`) to ``--out`` and the history to
``<out stem>.history.json``; every rank writes the sha256 of its final state dict to
``<out>.rank<N>.sha256``; the history's ``ranks`` lists every rank (its node, host,
launcher pid, the training rows it stepped on, its checksum).

Across machines, the same module under torchrun's c10d rendezvous (docs/SCALE_OUT.md)::

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29400 --rdzv-id JOB -m hub.training.distributed ...

``--out`` must be a path on rank 0's machine (only rank 0 writes the model and history; every
rank writes its checksum file under the same path on its own machine).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hub.datasets.records import RecordSet
from hub.specs import get_spec, param_value
from hub.training.artifact import TrainedModel, dump_model
from hub.training.loop import EpochResult, predict, seed_everything


def write_training_npz(path: Path, *, train: RecordSet, val: RecordSet) -> None:
    """The data file the distributed entry point reads: raw arrays of both splits."""
    if train.feature_shape != val.feature_shape:
        raise ValueError(f"train {train.feature_shape} and val {val.feature_shape} differ")
    empty = np.zeros(0, dtype=np.int64)
    np.savez(
        path,
        X_train=np.asarray(train.features, dtype=np.float32),
        y_train=np.asarray(train.labels, dtype=np.int64) if train.labels is not None else empty,
        X_val=np.asarray(val.features, dtype=np.float32),
        y_val=np.asarray(val.labels, dtype=np.int64) if val.labels is not None else empty,
        feature_shape=np.asarray(train.feature_shape, dtype=np.int64),
        feature_names=np.asarray(train.feature_names, dtype=np.str_),
        label_names=np.asarray(train.label_names or (), dtype=np.str_),
    )


def _records(data: Mapping[str, Any], split: str) -> RecordSet:
    x = np.asarray(data[f"X_{split}"], dtype=np.float32)
    shape = tuple(int(d) for d in data["feature_shape"])
    x = x.reshape(len(x), *shape)
    y = np.asarray(data[f"y_{split}"], dtype=np.int64)
    names = [str(n) for n in data["feature_names"]] if "feature_names" in data else []
    if len(names) != int(np.prod(shape)):
        names = [f"f{i}" for i in range(int(np.prod(shape)))]
    label_names = tuple(str(n) for n in data["label_names"])
    return RecordSet(
        ids=np.array([f"{split}-{i}" for i in range(len(x))], dtype=np.str_),
        features=x,
        labels=y if len(y) == len(x) and len(x) else None,
        feature_names=tuple(names),
        label_names=label_names or None,
    )


def load_training_npz(path: Path) -> tuple[RecordSet, RecordSet]:
    with np.load(path, allow_pickle=False) as npz:
        data = {key: npz[key] for key in npz.files}
    return _records(data, "train"), _records(data, "val")


@dataclass(frozen=True, kw_only=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device
    backend: str


@contextlib.contextmanager
def process_group() -> Iterator[World]:
    """Join the group torchrun describes in the environment, or a world of one without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend=backend, rank=rank, world_size=size)
    else:
        if size != 1:
            raise RuntimeError("WORLD_SIZE > 1 without MASTER_ADDR: launch with torchrun")
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield World(rank=rank, local_rank=local_rank, size=size, device=device, backend=backend)
    finally:
        dist.destroy_process_group()


def shard_indices(n: int, *, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's indices for ``epoch``: a seeded shuffle, padded to a multiple of ``world``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    padded = -(-n // world) * world
    if padded > n:
        order = torch.cat([order, order[: padded - n]])
    return order[rank::world]


def state_checksum(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _sync_buffers(model: nn.Module, world: World) -> None:
    """Average floating buffers (BatchNorm running stats) and take rank 0's integer ones."""
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world.size)
        else:
            dist.broadcast(buffer, src=0)


def train(
    *,
    spec_name: str,
    data: Path,
    out: Path,
    params: Mapping[str, Any],
    epochs: int | None,
    seed: int,
    world: World,
) -> list[EpochResult]:
    torch.set_num_threads(1)
    spec = get_spec(spec_name)
    merged = spec.params({**params, **({"epochs": epochs} if epochs is not None else {})})
    train_rs, val_rs = load_training_npz(data)
    preprocess = spec.preprocess(train_rs)
    train_x, val_x = preprocess.apply(train_rs.features), preprocess.apply(val_rs.features)
    train_y, val_y = spec.targets(train_rs), spec.targets(val_rs)
    num_outputs = spec.num_outputs(train_rs)
    seed_everything(seed)
    module = spec.build(params=merged, num_outputs=num_outputs).to(world.device)
    torch.manual_seed(seed + 1000 * world.rank)  # independent dropout masks per rank
    ddp = DistributedDataParallel(
        module, device_ids=[world.device] if world.device.type == "cuda" else None
    )
    optimizer = torch.optim.AdamW(
        ddp.parameters(), lr=float(merged["lr"]), weight_decay=float(merged.get("weight_decay", 0))
    )
    n_epochs = int(merged["epochs"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(n_epochs, 1))
    batch = max(1, -(-int(merged["batch_size"]) // world.size))  # global batch ~ batch_size
    x_all = torch.from_numpy(np.ascontiguousarray(train_x)).to(world.device)
    y_all = torch.from_numpy(np.array(train_y)).to(world.device) if train_y is not None else None
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if world.device.type == "cuda"
        else contextlib.nullcontext()
    )
    history: list[EpochResult] = []
    samples = 0  # training rows this rank stepped on, all epochs
    for epoch in range(n_epochs):
        ddp.train()
        shard = shard_indices(len(x_all), epoch=epoch, seed=seed, rank=world.rank, world=world.size)
        totals = torch.zeros(2, dtype=torch.float64, device=world.device)
        for start in range(0, len(shard), batch):
            index = shard[start : start + batch].to(world.device)
            x = x_all[index]
            y = y_all[index] if y_all is not None else None
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = spec.loss(ddp(x), x, y)
            loss.backward()
            optimizer.step()
            totals[0] += float(loss.detach()) * len(index)
            totals[1] += len(index)
            samples += len(index)
        scheduler.step()
        _sync_buffers(module, world)
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        train_loss = float(totals[0] / totals[1].clamp(min=1))
        metrics: dict[str, float] = {}
        if world.rank == 0:
            outputs = predict(module, val_x, device=world.device)
            metrics = spec.evaluate(outputs=outputs, inputs=val_x, targets=val_y)
        history.append(EpochResult(epoch=epoch + 1, train_loss=train_loss, val_metrics=metrics))
        if world.rank == 0:
            print(f"epoch {epoch + 1}/{n_epochs} loss {train_loss:.4f} {metrics}", flush=True)
    module.to("cpu")
    checksum = state_checksum(module)
    Path(f"{out}.rank{world.rank}.sha256").write_text(checksum + "\n")
    ranks: list[Any] = [None] * world.size  # who took part: one entry per rank
    dist.all_gather_object(ranks, _rank_facts(world, samples=samples, checksum=checksum))
    if world.rank == 0:
        trained = TrainedModel(
            spec=spec,
            params=merged,
            num_outputs=num_outputs,
            labels=list(train_rs.label_names) if train_rs.label_names else None,
            preprocess=preprocess,
            model=module,
        )
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(dump_model(trained))
        os.replace(tmp, out)
        summary = {
            "spec": spec.name,
            "code_version": spec.code_version(),
            "params": merged,
            "seed": seed,
            "world_size": world.size,
            "backend": world.backend,
            "checksum": checksum,
            "ranks": ranks,
            "written_by": ranks[0],
            "epochs": [h.__dict__ for h in history],
        }
        history_path(out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    dist.barrier()
    return history


def _rank_facts(world: World, *, samples: int, checksum: str) -> dict[str, Any]:
    """What one rank says of itself in the history: where it ran (torchrun's node =
    ``GROUP_RANK``, its host, its launcher's pid) and how many training rows it stepped on."""
    return {
        "rank": world.rank,
        "local_rank": world.local_rank,
        "node_rank": int(os.environ.get("GROUP_RANK", "0")),
        "host": socket.gethostname(),
        "launcher_pid": os.getppid(),
        "samples": samples,
        "checksum": checksum,
    }


def history_path(out: Path) -> Path:
    return out.with_suffix(".history.json")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hub.training.distributed")
    parser.add_argument("--spec", required=True, help="built-in spec name or module:Class")
    parser.add_argument("--data", required=True, type=Path, help=".npz from write_training_npz")
    parser.add_argument("--out", required=True, type=Path, help="model artifact to write")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    params: dict[str, Any] = {}
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--param {pair!r} must look like key=value")
        params[key] = param_value(value)
    args.params = params
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with process_group() as world:
        train(
            spec_name=args.spec,
            data=args.data,
            out=args.out,
            params=args.params,
            epochs=args.epochs,
            seed=args.seed,
            world=world,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
