"""What a prediction call returns and the predictor's counters: plain value types.

Kept apart from :mod:`edge_agent._predictor` (the hot path) so readers of results (the HTTP
endpoint, batch scoring, the agent) need not know how predictions are made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent._model import LoadedModel
from edge_agent.errors import NoModelLoaded, PredictionError

__all__ = [
    "NoModelLoaded",
    "Prediction",
    "PredictionError",
    "PredictorStats",
    "Served",
    "ShadowObserver",
    "ShadowReport",
    "reconstruction_error",
]


class Served(Protocol):
    """What served a prediction: the names :class:`Prediction` reports."""

    name: str
    version: str
    variant: str
    labels: tuple[str, ...] | None


class Prediction:
    """One call's result. ``ids`` (``prefix + str(first + i)`` for its ``n`` records) and
    ``labels`` (classifiers: the argmax label per record) are built when first read, off
    the hot path; ``scores``: reconstruction error per record."""

    __slots__ = (
        "_first",
        "_ids",
        "_labels",
        "_n",
        "_prefix",
        "_served",
        "latency_ms",
        "outputs",
        "scores",
    )

    def __init__(
        self,
        prefix: str,
        first: int,
        n: int,
        outputs: np.ndarray,
        scores: np.ndarray | None,
        latency_ms: float,
        served: Served,
    ) -> None:
        self._prefix, self._first, self._n, self.outputs, self.scores = (
            prefix,
            first,
            n,
            outputs,
            scores,
        )
        self.latency_ms, self._served = latency_ms, served
        self._ids: list[str] | None = None
        self._labels: list[str] | None = None

    @property
    def ids(self) -> list[str]:
        """One prediction id per record (feedback names a prediction by it)."""
        if self._ids is None:
            prefix, first = self._prefix, self._first
            self._ids = [f"{prefix}{i}" for i in range(first, first + self._n)]
        return self._ids

    @property
    def model(self) -> str:
        return self._served.name

    @property
    def version(self) -> str:
        return self._served.version

    @property
    def variant(self) -> str:
        return self._served.variant

    @property
    def labels(self) -> list[str] | None:
        names = self._served.labels
        if self._labels is None and names is not None:
            n = self._n
            self._labels = [names[i] for i in self.outputs.reshape(n, -1).argmax(axis=1).tolist()]
        return self._labels

    def __repr__(self) -> str:
        return (
            f"Prediction(ids={self.ids!r}, model={self.model}@{self.version}, "
            f"latency_ms={self.latency_ms:.3f})"
        )


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """One shadowed call: how many records were compared and how many agreed.

    A shadow that fails is reported too: ``compared`` 0, ``errors`` the records, ``error``
    the reason (a candidate that crashes must count against it).
    """

    ids: list[str]
    compared: int
    agreed: int
    errors: int
    latency_delta_ms: float  # shadow latency minus the active one (0.0 when it failed)
    method: str  # "argmax", "anomaly_flag" or "max_abs_diff<=ATOL"
    active: LoadedModel = field(repr=False)
    shadow: LoadedModel = field(repr=False)
    error: str = ""

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else math.nan


ShadowObserver = Callable[[ShadowReport], None]


@dataclass(frozen=True, slots=True)
class PredictorStats:
    calls: int
    records: int
    errors: int
    observer_errors: int
    shadow_runs: int
    shadow_errors: int


def reconstruction_error(outputs: np.ndarray, inputs: np.ndarray) -> npt.NDArray[np.float64]:
    """Per-record mean squared error (as the reference profile computes it)."""
    n = len(outputs)
    diff = outputs.reshape(n, -1).astype(np.float64) - inputs.reshape(n, -1)
    return np.asarray(np.mean(diff * diff, axis=1))
