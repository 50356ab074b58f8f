"""Label feedback on the device: ground truth for earlier predictions, in ``Feedback`` batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edge_agent._telemetry import ms
from proto import messages_pb2 as pb

__all__ = ["FeedbackBuffer"]


class FeedbackBuffer:
    """Labels for earlier predictions, batched into ``Feedback`` messages."""

    def __init__(self, *, device_id: str, clock: Callable[[], float] = time.time) -> None:
        self.device_id, self._clock = device_id, clock
        self._lock = threading.Lock()
        self._labels: list[pb.Label] = []
        self._oldest = 0.0

    def add(
        self,
        *,
        prediction_id: str,
        label: int | None = None,
        value: float | None = None,
        model: str,
        version: str,
        predicted_label: int | None = None,
        predicted_value: float | None = None,
        at: float | None = None,
        source: str = "",
    ) -> None:
        """Ground truth for ``prediction_id``: a class ``label`` or a target ``value``;
        ``source`` names the record the input came from, when known (``Label.source``)."""
        if (label is None) == (value is None):
            raise ValueError("give exactly one of label and value")
        if not prediction_id:
            raise ValueError("prediction_id must be non-empty")
        now = self._clock()
        item = pb.Label(
            prediction_id=prediction_id,
            at=ms(now if at is None else at),
            model=model,
            version=version,
            source=source,
        )
        if label is not None:
            item.label = int(label)
        elif value is not None:
            item.value = float(value)
        if predicted_label is not None:
            item.predicted_label = int(predicted_label)
        if predicted_value is not None:
            item.predicted_value = float(predicted_value)
        with self._lock:
            if not self._labels:
                self._oldest = now
            self._labels.append(item)

    def __len__(self) -> int:
        with self._lock:
            return len(self._labels)

    def empty(self) -> bool:
        return len(self) == 0

    def due(self, *, max_labels: int = 100, max_age_s: float = 10.0) -> bool:
        """``max_labels`` waiting, or the oldest waiting label is ``max_age_s`` old."""
        with self._lock:
            n, age = len(self._labels), self._clock() - self._oldest
            return n > 0 and (n >= max_labels or age >= max_age_s)

    def close(self, *, seq: int) -> pb.Feedback:
        """Every waiting label as one ``Feedback`` numbered ``seq``; the buffer empties."""
        if seq < 1:
            raise ValueError("seq starts at 1")
        with self._lock:
            labels, self._labels = self._labels, []
        return pb.Feedback(device_id=self.device_id, seq=seq, labels=labels)

    def restore(self, feedback: pb.Feedback) -> None:
        """Put a closed batch's labels back in front (it could not be queued: a full disk),
        to go out with the next batch; its age restarts, so the retry waits ``max_age_s``."""
        with self._lock:
            if not self._labels:
                self._oldest = self._clock()
            self._labels[:0] = list(feedback.labels)
