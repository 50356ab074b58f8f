"""Training loop: ``hub.training.loop.fit`` against a plain hand-written PyTorch loop.

Same digits-cnn network (built from the spec with the same seed), same preprocessed digits
train split, batch size, AdamW settings, epochs and thread count (1), measured in the same
run, interleaved (the order alternates every repeat), median of several repeats. ``fit``
validates after every epoch, so the plain loop runs the same validation (forward on the
val split in inference mode, then ``spec.evaluate``): both timings cover training plus
per-epoch validation. ``fit`` also steps a cosine learning-rate schedule and writes no
checkpoint (none is asked for); the plain loop has no schedule. Target: >= 0.95x the plain
loop's samples/s. On a CUDA machine a larger digits-cnn (wider, bigger batches) is timed
the same way and recorded under ``gpu``; without one ``gpu`` is null.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from bench._result import BenchResult
from hub.datasets.sources import load_source
from hub.datasets.splits import DEFAULT_FRACTIONS, assign_splits
from hub.specs import ModelSpec, get_spec
from hub.training.loop import TrainConfig, fit, predict, seed_everything

SPEC = "digits-cnn"
EPOCHS = 3
REPEATS = 7
SEED = 0
TARGET = 0.95

Arrays = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]
]


def _data(spec: ModelSpec) -> Arrays:
    records = load_source("sklearn:digits")
    names = assign_splits(records.ids, fractions=DEFAULT_FRACTIONS, salt="digits")
    train, val = records.subset(names == "train"), records.subset(names == "val")
    preprocess = spec.preprocess(train)
    train_y, val_y = spec.targets(train), spec.targets(val)
    assert train_y is not None and val_y is not None
    return preprocess.apply(train.features), train_y, preprocess.apply(val.features), val_y


def _time_fit(
    spec: ModelSpec,
    params: Mapping[str, Any],
    data: Arrays,
    *,
    device: str,
    precision: Literal["bf16", "fp32"] = "fp32",
) -> float:
    train_x, train_y, val_x, val_y = data
    seed_everything(SEED)
    model = spec.build(params=params, num_outputs=10)
    config = TrainConfig(
        epochs=int(params["epochs"]),
        batch_size=int(params["batch_size"]),
        lr=float(params["lr"]),
        weight_decay=float(params["weight_decay"]),
        seed=SEED,
        device=device,
        threads=1,
        precision=precision,
    )
    start = time.perf_counter()
    fit(
        spec=spec,
        model=model,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        config=config,
    )
    _sync(device)
    return time.perf_counter() - start


def _time_plain(spec: ModelSpec, params: Mapping[str, Any], data: Arrays, *, device: str) -> float:
    """The loop anyone would write: shuffled index batches, AdamW, per-epoch validation."""
    train_x, train_y, val_x, val_y = data
    seed_everything(SEED)
    model = spec.build(params=params, num_outputs=10)
    dev = torch.device(device)
    start = time.perf_counter()
    model.to(dev)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    x_all = torch.from_numpy(np.ascontiguousarray(train_x)).to(dev)
    y_all = torch.from_numpy(np.array(train_y)).to(dev)
    batch = int(params["batch_size"])
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(int(params["epochs"])):
        model.train()
        order = torch.randperm(len(x_all), generator=generator).to(dev)
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x_all[index]), y_all[index])
            loss.backward()
            optimizer.step()
        outputs = predict(model, val_x, device=dev)
        spec.evaluate(outputs=outputs, inputs=val_x, targets=val_y)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _compare(
    spec: ModelSpec,
    params: Mapping[str, Any],
    data: Arrays,
    *,
    device: str,
    repeats: int,
    precision: Literal["bf16", "fp32"] = "fp32",
) -> dict[str, Any]:
    samples = len(data[0]) * int(params["epochs"])
    _time_fit(spec, params, data, device=device, precision=precision)  # warm-up
    _time_plain(spec, params, data, device=device)
    fit_s: list[float] = []
    plain_s: list[float] = []
    for repeat in range(repeats):
        order = ("fit", "plain") if repeat % 2 == 0 else ("plain", "fit")
        for which in order:
            if which == "fit":
                fit_s.append(_time_fit(spec, params, data, device=device, precision=precision))
            else:
                plain_s.append(_time_plain(spec, params, data, device=device))
    fit_rate = samples / statistics.median(fit_s)
    plain_rate = samples / statistics.median(plain_s)
    return {
        "device": device,
        "precision": precision,
        "params": dict(params),
        "train_samples": len(data[0]),
        "val_samples": len(data[2]),
        "repeats": repeats,
        "fit_samples_per_s": round(fit_rate, 1),
        "plain_samples_per_s": round(plain_rate, 1),
        "ratio": round(fit_rate / plain_rate, 3),
        "fit_s": [round(s, 3) for s in fit_s],
        "plain_s": [round(s, 3) for s in plain_s],
    }


def _gpu(spec: ModelSpec, data: Arrays) -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    # Enough epochs that a timing is ~1 s, not a handful of kernel launches.
    params = spec.params({"channels": 128, "hidden": 512, "batch_size": 256, "epochs": 60})
    result = _compare(spec, params, data, device="cuda", repeats=3, precision="fp32")
    bf16 = _compare(spec, params, data, device="cuda", repeats=3, precision="bf16")
    result["bf16"] = {k: bf16[k] for k in ("fit_samples_per_s", "plain_samples_per_s", "ratio")}
    result["note"] = (
        "larger digits-cnn on CUDA; ratio: fit in fp32 vs the plain fp32 loop; bf16: fit under "
        "bf16 autocast (the default on CUDA) vs the same plain fp32 loop"
    )
    result["gpu_name"] = torch.cuda.get_device_name(0)
    return result


def run() -> BenchResult:
    torch.set_num_threads(1)
    spec = get_spec(SPEC)
    data = _data(spec)
    params = spec.params({"epochs": EPOCHS})
    cpu = _compare(spec, params, data, device="cpu", repeats=REPEATS)
    details: dict[str, Any] = {
        "cpu": cpu,
        "timed": "training epochs plus the same per-epoch validation in both loops",
        "threads": 1,
        "gpu": _gpu(spec, data),
    }
    print(
        f"  {SPEC} cpu x1 thread: fit {cpu['fit_samples_per_s']:.0f} samples/s, "
        f"plain {cpu['plain_samples_per_s']:.0f} samples/s (x{cpu['ratio']:.3f})"
    )
    gpu = details["gpu"]
    if gpu is not None:
        print(
            f"  {SPEC} {gpu['gpu_name']}: fit fp32 x{gpu['ratio']:.3f}, "
            f"fit bf16 x{gpu['bf16']['ratio']:.3f} vs the plain fp32 loop"
        )
    return BenchResult(
        name="train",
        baseline="plain PyTorch loop (AdamW, same model, data, batch, epochs, 1 thread), same run",
        ratio=cpu["ratio"],
        target=f">= {TARGET}",
        met=cpu["ratio"] >= TARGET,
        details=details,
    )
