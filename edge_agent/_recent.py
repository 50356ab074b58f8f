"""What the device predicted, for a bounded number of recent predictions.

Label feedback names a prediction by id; the hub's accuracy gate and monitoring need what the
device predicted for it (``Label.predicted_label`` / ``predicted_value``, docs/PROTOCOL.md:
"when it still holds the prediction"). The predictor's hot path only appends each call to the
agent's pending deque; :meth:`RecentPredictions.remember` runs where the agent drains that
deque (the telemetry tick, or a feedback call that drains first), so ``Agent.predict`` pays
nothing for it. The oldest predictions are forgotten first once ``capacity`` are held.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

__all__ = ["DEFAULT_CAPACITY", "Predicted", "RecentPredictions"]

DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True, slots=True)
class Predicted:
    """One remembered prediction."""

    model: str
    version: str
    label: int | None = None
    value: float | None = None


class RecentPredictions:
    """prediction id -> :class:`Predicted`, the last ``capacity`` predictions (thread-safe)."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        # id -> (model, version, label, value): tuples are the cheapest to build in bulk
        self._items: OrderedDict[str, tuple[str, str, int | None, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def remember(
        self,
        *,
        ids: Sequence[str],
        outputs: np.ndarray,
        model: str,
        version: str,
        classes: bool,
    ) -> None:
        """Remember one call's predictions: the top-1 class of each row of ``outputs`` for a
        classifier, else a single output value per row (nothing for wider outputs)."""
        n = len(ids)
        if n == 0:
            return
        out = np.asarray(outputs).reshape(n, -1)
        labels: list[Any] = [None] * n
        values: list[Any] = [None] * n
        if classes and out.shape[1] > 1:
            labels = out.argmax(axis=1).tolist()
        elif out.shape[1] == 1:
            values = out[:, 0].astype(float).tolist()
        else:
            return
        items = self._items
        with self._lock:
            items.update(zip(ids, zip(repeat(model), repeat(version), labels, values), strict=True))
            for _ in range(len(items) - self.capacity):
                items.popitem(last=False)

    def get(self, prediction_id: str) -> Predicted | None:
        with self._lock:
            found = self._items.get(prediction_id)
        return None if found is None else Predicted(*found)
