"""What the device predicted, for a bounded number of recent predictions.

Label feedback names a prediction by id; the hub's accuracy gate and monitoring need what the
device predicted for it (``Label.predicted_label`` / ``predicted_value``, docs/PROTOCOL.md:
"when it still holds the prediction"). The predictor's hot path only appends each call to the
agent's pending deque; :meth:`RecentPredictions.remember` runs where the agent drains that
deque (the telemetry tick, or a feedback call that drains first), so ``Agent.predict`` pays
nothing for it. The oldest predictions are forgotten first once ``capacity`` are held.

The predictor's ids are ``prefix + counter`` (:meth:`RecentPredictions.remember_counted`):
those are held in a ring of ``capacity`` slots indexed by ``counter % capacity`` (numpy
columns written a whole drain at a time, no per-prediction Python object), so the last
``capacity`` counters are held; :meth:`~RecentPredictions.get` parses the counter back.
Other ids (:meth:`~RecentPredictions.remember`) go to an ordered dict with its own
``capacity``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

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
        # the counted ids' ring: slot = counter % capacity; -1: empty
        self._prefix: str | None = None
        self._key = np.full(capacity, -1, np.int64)
        self._label = np.zeros(capacity, np.int64)
        self._value = np.zeros(capacity, np.float64)
        self._has_value = np.zeros(capacity, np.bool_)  # else a label
        self._source = np.zeros(capacity, np.int32)  # index into _sources
        self._sources: list[tuple[str, str]] = []  # (model, version)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items) + int(np.count_nonzero(self._key >= 0))

    def remember_counted(
        self,
        *,
        prefix: str,
        counters: npt.NDArray[np.int64],
        outputs: np.ndarray,
        model: str,
        version: str,
        classes: bool,
    ) -> None:
        """:meth:`remember` for the ids ``prefix + str(counter)`` (distinct counters, one per
        row of ``outputs``), whole-column: a few numpy calls whatever their number."""
        n = len(counters)
        if n == 0:
            return
        out = np.asarray(outputs).reshape(n, -1)
        if classes and out.shape[1] > 1:
            labels, has_value = out.argmax(axis=1), False
        elif out.shape[1] == 1:
            labels, has_value = None, True
        else:
            return
        cap = self.capacity
        with self._lock:
            if self._prefix != prefix:  # a new predictor (never in one agent): start over
                self._prefix = prefix
                self._key.fill(-1)
            keep = counters > counters.max() - cap  # a batch over capacity: its newest
            if not keep.all():
                counters, out = counters[keep], out[keep]
                labels = None if labels is None else labels[keep]
            slots = counters % cap  # distinct: the counters are within capacity of each other
            newer = counters > self._key[slots]  # never over a newer prediction's slot
            if not newer.all():
                slots, counters, out = slots[newer], counters[newer], out[newer]
                labels = None if labels is None else labels[newer]
            try:
                source = self._sources.index((model, version))
            except ValueError:
                source = len(self._sources)
                self._sources.append((model, version))
            self._key[slots] = counters
            self._source[slots] = source
            self._has_value[slots] = has_value
            if labels is not None:
                self._label[slots] = labels
            else:
                self._value[slots] = out[:, 0]

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
            prefix = self._prefix
            if prefix is not None and prediction_id.startswith(prefix):
                tail = prediction_id[len(prefix) :]
                if (
                    tail.isascii() and tail.isdigit() and tail == str(int(tail))
                ):  # the predictor's own form
                    counter = int(tail)
                    slot = counter % self.capacity
                    if self._key[slot] != counter:
                        return None
                    model, version = self._sources[int(self._source[slot])]
                    if self._has_value[slot]:
                        return Predicted(model, version, value=float(self._value[slot]))
                    return Predicted(model, version, label=int(self._label[slot]))
            found = self._items.get(prediction_id)
        return None if found is None else Predicted(*found)
