"""Built-in unsupervised spec: a 1-D convolutional autoencoder on 3x64 vibration windows.

Its output is the reconstructed window; the anomaly score is the reconstruction error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from hub.datasets.records import RecordSet
from hub.datasets.sources import load_source
from hub.specs._base import ModelSpec, standardise
from model_packager.preprocess import Preprocess


class VibrationAE(ModelSpec):
    name = "vibration-ae"
    task = "reconstruction"
    description = "conv autoencoder; anomaly score = reconstruction MSE of a 3x64 window"
    primary_metric = "neg_reconstruction_mse"
    defaults: ClassVar[Mapping[str, Any]] = {
        "channels": 16,
        "latent": 32,
        "epochs": 40,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 0.0,
    }
    min_metric = -0.2  # reconstruction MSE of standardised windows below 0.2 (measured: 0.044)

    def preprocess(self, train: RecordSet) -> Preprocess:
        return standardise(train, input_shape=list(train.feature_shape), per_channel=True)

    def build(self, *, params: Mapping[str, Any], num_outputs: int) -> nn.Module:
        c, latent = int(params["channels"]), int(params["latent"])
        return nn.Sequential(
            nn.Conv1d(3, c, kernel_size=5, stride=2, padding=2),  # 64 -> 32
            nn.ReLU(),
            nn.Conv1d(c, 2 * c, kernel_size=5, stride=2, padding=2),  # 32 -> 16
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * c * 16, latent),
            nn.ReLU(),
            nn.Linear(latent, 2 * c * 16),
            nn.ReLU(),
            nn.Unflatten(1, (2 * c, 16)),
            nn.ConvTranspose1d(2 * c, c, kernel_size=4, stride=2, padding=1),  # 16 -> 32
            nn.ReLU(),
            nn.ConvTranspose1d(c, 3, kernel_size=4, stride=2, padding=1),  # 32 -> 64
        )

    def anomaly_examples(self) -> RecordSet | None:
        return load_source("synthetic:vibration-faulty")

    def loss(
        self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        return F.mse_loss(outputs, inputs)
