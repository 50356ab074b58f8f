"""Run :mod:`hub.training.distributed` under ``torchrun`` from inside the hub.

``hub.training.service.train(..., nproc=N)`` with ``N > 1`` writes the splits to a temporary
``.npz``, starts ``torchrun --standalone --nproc-per-node N -m hub.training.distributed`` (DDP:
gloo on CPU, nccl on CUDA), relays its per-epoch lines, and reads back the model artifact and
the history that rank 0 wrote. Everything else (tracking, test evaluation, registration) is
the same code path as a one-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hub.core.errors import EdgeloopError
from hub.datasets.records import RecordSet
from hub.training.artifact import TrainedModel, load_model
from hub.training.distributed import history_path, write_training_npz
from hub.training.loop import EpochResult


class DistributedTrainingFailed(EdgeloopError):
    code = "training_failed"


def run_torchrun(
    *,
    spec_name: str,
    train: RecordSet,
    val: RecordSet,
    params: Mapping[str, Any],
    seed: int,
    nproc: int,
    on_line: Callable[[str], None] | None = None,
) -> tuple[TrainedModel, list[EpochResult]]:
    """Train with ``nproc`` DDP processes on this machine; the model and per-epoch history."""
    if nproc < 2:
        raise ValueError("run_torchrun is for 2 or more processes; train in-process otherwise")
    with tempfile.TemporaryDirectory(prefix="edgeloop-ddp-") as tmp:
        data, out = Path(tmp) / "data.npz", Path(tmp) / "model.pt"
        write_training_npz(data, train=train, val=val)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "-m",
            "hub.training.distributed",
            "--spec",
            spec_name,
            "--data",
            str(data),
            "--out",
            str(out),
            "--seed",
            str(seed),
        ]
        for key, value in params.items():
            command += ["--param", f"{key}={value}"]
        env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE"}}
        env.setdefault("OMP_NUM_THREADS", "1")
        tail: list[str] = []
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = [*tail[-40:], line.rstrip()]
                if on_line is not None and line.startswith("epoch "):
                    on_line(line.rstrip())
            code = proc.wait()
        if code != 0 or not out.exists():
            raise DistributedTrainingFailed(
                f"torchrun with {nproc} processes exited with {code}; last output:\n"
                + "\n".join(tail[-15:])
            )
        summary = json.loads(history_path(out).read_text())
        history = [
            EpochResult(
                epoch=int(h["epoch"]),
                train_loss=float(h["train_loss"]),
                val_metrics={k: float(v) for k, v in h["val_metrics"].items()},
            )
            for h in summary["epochs"]
        ]
        return load_model(out.read_bytes()), history
