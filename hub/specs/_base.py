"""The model spec interface: model code as a unit, versioned by the digest of its source.

A spec knows how to build its network from hyperparameters, the feature transform that
training and the device both apply (it goes into the bundle manifest), its loss and its
evaluation metric. ``task`` tells the packager and monitoring what the output means, so
nothing downstream assumes every model is a classifier.
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hub.datasets.records import RecordSet
from model_packager.preprocess import Preprocess

Task = Literal["classification", "reconstruction"]


class ModelSpec(ABC):
    """Subclass, set the class variables and implement ``build``, ``preprocess`` and ``loss``."""

    name: ClassVar[str]
    task: ClassVar[Task]
    description: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: A run whose primary metric reaches this registers a version aliased ``candidate``.
    min_metric: ClassVar[float] = 0.0
    primary_metric: ClassVar[str] = "accuracy"

    def params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        unknown = set(overrides or {}) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"spec {self.name}: unknown parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.defaults)}"
            )
        return {**self.defaults, **(overrides or {})}

    @abstractmethod
    def preprocess(self, train: RecordSet) -> Preprocess:
        """The transform from raw records to model input, fitted on the training split."""

    @abstractmethod
    def build(self, *, params: Mapping[str, Any], num_outputs: int) -> nn.Module:
        """A fresh network (random weights seeded by the caller)."""

    @abstractmethod
    def loss(
        self, outputs: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """The training loss for one batch."""

    def anomaly_examples(self) -> RecordSet | None:
        """Known-anomalous raw records for reconstruction models (scores the packager's gate)."""
        return None

    def targets(self, records: RecordSet) -> npt.NDArray[np.int64] | None:
        return None if self.task == "reconstruction" else records.labels

    def num_outputs(self, records: RecordSet) -> int:
        if self.task == "reconstruction":
            return 0
        names = records.label_names
        if names:
            return len(names)
        labels = records.labels
        return int(labels.max()) + 1 if labels is not None and len(labels) else 0

    def evaluate(
        self,
        *,
        outputs: npt.NDArray[np.float32],
        inputs: npt.NDArray[np.float32],
        targets: npt.NDArray[np.int64] | None,
    ) -> dict[str, float]:
        """Metrics on model outputs; ``primary_metric`` must be among them (higher is better)."""
        if self.task == "classification":
            if targets is None:
                raise ValueError(f"spec {self.name} is a classifier but the data has no labels")
            return {"accuracy": float((outputs.argmax(axis=1) == targets).mean() * 100.0)}
        errors = ((outputs - inputs) ** 2).reshape(len(inputs), -1).mean(axis=1)
        return {
            "reconstruction_mse": float(errors.mean()),
            "neg_reconstruction_mse": -float(errors.mean()),
        }

    def code_version(self) -> str:
        """Digest of the source that defines this spec (its module); recorded on every run."""
        module = inspect.getmodule(type(self))
        source = inspect.getsource(module) if module is not None else inspect.getsource(type(self))
        return "sha256:" + hashlib.sha256(source.encode()).hexdigest()


def standardise(train: RecordSet, *, input_shape: list[int], per_channel: bool) -> Preprocess:
    """(x - mean) / std fitted on the training split: over all values, or per channel (the
    first axis of ``input_shape``, e.g. the 3 axes of a vibration window)."""
    x = train.features.astype(np.float64).reshape(len(train), *input_shape)
    if per_channel:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        mean = x.mean(axis=axes)
        std = x.std(axis=axes)
        std[std < 1e-6] = 1.0
        tail = [1] * (len(input_shape) - 1)
        return Preprocess(
            input_shape=input_shape,
            mean=mean.reshape(-1, *tail).tolist(),
            scale=std.reshape(-1, *tail).tolist(),
            reshape_from=list(train.feature_shape),
        )
    std_all = float(x.std())
    return Preprocess(
        input_shape=input_shape,
        mean=float(x.mean()),
        scale=std_all if std_all > 1e-6 else 1.0,
        reshape_from=list(train.feature_shape),
    )


def param_value(text: str) -> Any:
    """A hyperparameter given as text (CLI ``--param k=v``): an int, a float, or the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
