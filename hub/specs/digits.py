"""Built-in specs for ``sklearn:digits`` (8x8 images, 10 classes): a small CNN and an MLP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from hub.datasets.records import RecordSet
from hub.specs._base import ModelSpec, standardise
from model_packager.preprocess import Preprocess


class DigitsCNN(ModelSpec):
    name = "digits-cnn"
    task = "classification"
    description = "two conv blocks and a dense head on 1x8x8 digit images (the demo model)"
    defaults: ClassVar[Mapping[str, Any]] = {
        "channels": 32,
        "hidden": 128,
        "dropout": 0.1,
        "epochs": 30,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 1e-4,
    }
    min_metric = 90.0

    def preprocess(self, train: RecordSet) -> Preprocess:
        return standardise(train, input_shape=[1, 8, 8], per_channel=False)

    def build(self, *, params: Mapping[str, Any], num_outputs: int) -> nn.Module:
        c, hidden = int(params["channels"]), int(params["hidden"])
        return nn.Sequential(
            nn.Conv2d(1, c, kernel_size=3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 2 * 2, hidden),
            nn.ReLU(),
            nn.Dropout(float(params["dropout"])),
            nn.Linear(hidden, num_outputs),
        )

    def loss(
        self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        assert targets is not None
        return F.cross_entropy(outputs, targets)


class DigitsMLP(ModelSpec):
    name = "digits-mlp"
    task = "classification"
    description = "a two-layer MLP on the 64 pixels"
    defaults: ClassVar[Mapping[str, Any]] = {
        "hidden": 128,
        "dropout": 0.1,
        "epochs": 30,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 1e-4,
    }
    min_metric = 90.0

    def preprocess(self, train: RecordSet) -> Preprocess:
        return standardise(train, input_shape=[64], per_channel=False)

    def build(self, *, params: Mapping[str, Any], num_outputs: int) -> nn.Module:
        hidden = int(params["hidden"])
        return nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(float(params["dropout"])),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_outputs),
        )

    def loss(
        self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        assert targets is not None
        return F.cross_entropy(outputs, targets)
