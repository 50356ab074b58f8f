"""The training loop: seeded, checkpointed, CPU or CUDA (mixed precision on CUDA).

Small models train fastest here on one CPU thread; ``threads`` sets it. Batches are drawn
by index from in-memory tensors (no DataLoader workers: the datasets fit in memory).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hub.specs import ModelSpec


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int | None = 1  # CPU threads; None leaves torch's default
    # On CUDA, "bf16" trains under bf16 autocast (faster for wide models, weights stay fp32);
    # "fp32" does not. The CPU always trains in fp32.
    precision: Literal["bf16", "fp32"] = "bf16"

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], *, seed: int = 0, device: str = "auto"
    ) -> TrainConfig:
        """A spec's merged parameters (``epochs``, ``batch_size``, ``lr``, ``weight_decay``)."""
        return cls(
            epochs=int(params["epochs"]),
            batch_size=int(params["batch_size"]),
            lr=float(params["lr"]),
            weight_decay=float(params.get("weight_decay", 0.0)),
            seed=seed,
            device=device,
        )


@dataclass(frozen=True, kw_only=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_metrics: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def predict(
    model: nn.Module, inputs: npt.NDArray[np.float32], *, device: torch.device, batch: int = 512
) -> npt.NDArray[np.float32]:
    """Model outputs for ``inputs`` (already preprocessed), in eval mode."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch])).to(device)
            outputs.append(model(x).float().cpu().numpy())
    return np.concatenate(outputs).astype(np.float32)


def _batches(
    n: int, size: int, generator: torch.Generator, *, device: torch.device
) -> Iterator[torch.Tensor]:
    # The permutation is drawn on the CPU (same order on every device for a seed) and moved
    # once per epoch: one host-to-device copy, not one per batch.
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, size):
        yield order[start : start + size]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def fit(
    *,
    spec: ModelSpec,
    model: nn.Module,
    train_x: npt.NDArray[np.float32],
    train_y: npt.NDArray[np.int64] | None,
    val_x: npt.NDArray[np.float32],
    val_y: npt.NDArray[np.int64] | None,
    config: TrainConfig,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint: Path | None = None,
) -> list[EpochResult]:
    """Train ``model`` in place; resumes from ``checkpoint`` when it holds a later epoch."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    generator = torch.Generator().manual_seed(config.seed)
    history: list[EpochResult] = []
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = [EpochResult(**h) for h in state["history"]]
        start_epoch = int(state["epoch"])

    x_all = torch.from_numpy(np.ascontiguousarray(train_x)).to(device)
    y_all = torch.from_numpy(np.array(train_y)).to(device) if train_y is not None else None
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and config.precision == "bf16"
        else contextlib.nullcontext()
    )
    for epoch in range(start_epoch, config.epochs):
        model.train()
        # The loss is summed on the device and read once per epoch: reading it per batch
        # would wait for the GPU after every step.
        total = torch.zeros((), device=device, dtype=torch.float32)
        count = 0
        for index in _batches(len(x_all), config.batch_size, generator, device=device):
            x = x_all[index]
            y = y_all[index] if y_all is not None else None
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = spec.loss(model(x), x, y)
            loss.backward()
            optimizer.step()
            total += loss.detach().float() * len(index)
            count += len(index)
        scheduler.step()
        outputs = predict(model, val_x, device=device)
        result = EpochResult(
            epoch=epoch + 1,
            train_loss=float(total) / max(count, 1),
            val_metrics=spec.evaluate(outputs=outputs, inputs=val_x, targets=val_y),
        )
        history.append(result)
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": [h.__dict__ for h in history],
                },
            )
        if on_epoch is not None:
            on_epoch(result)
    model.to("cpu")
    return history
