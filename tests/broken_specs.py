"""Deliberately broken model specs for the model code check tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from hub.specs.digits import DigitsMLP


class _FlattenBatch(nn.Module):
    """Folds the batch axis away: the output has no batch dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)[:10]


class WrongShapeSpec(DigitsMLP):
    name = "broken-wrong-shape"

    def build(self, *, params: Mapping[str, Any], num_outputs: int) -> nn.Module:
        return nn.Sequential(nn.Linear(64, num_outputs), _FlattenBatch())


class NanLossSpec(DigitsMLP):
    name = "broken-nan-loss"

    def loss(
        self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        return super().loss(outputs, inputs, targets) * float("nan")


class FailingTestCasesSpec(DigitsMLP):
    name = "broken-test-cases"
    check_source: ClassVar[str] = "sklearn:digits"
    defaults: ClassVar[Mapping[str, Any]] = {**DigitsMLP.defaults, "hidden": 16}

    def test_cases(self, model: nn.Module) -> list[str]:
        out = model(torch.zeros(2, 64))
        failures = []
        if out.shape[1] != 11:
            failures.append(f"expected 11 classes, got {out.shape[1]}")
        return failures


class PassingTestCasesSpec(DigitsMLP):
    name = "ok-test-cases"
    defaults: ClassVar[Mapping[str, Any]] = {**DigitsMLP.defaults, "hidden": 16}

    def test_cases(self, model: nn.Module) -> list[str]:
        return [] if model(torch.zeros(1, 64)).shape == (1, 10) else ["wrong output shape"]


class NotASpec:
    pass
