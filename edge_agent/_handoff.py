"""The hand-off from the predictor to the telemetry tick.

Every served call is appended by the predictor to the bounded deque :attr:`Handoff.sink`
as a :data:`CallTuple`: one C-level append of a tuple literal, no lock and no Python call
on the request path (a NamedTuple or slotted dataclass built there costs 0.1-0.2 us more
per prediction). The agent's tick drains it (:meth:`Handoff.drain`) into
:class:`PendingCalls`: the calls by field (one ``zip``, C-level), one group per model that
served them. Draining remembers what each call predicted (for feedback labels,
:class:`~edge_agent._recent.RecentPredictions`); :func:`record_calls` records a group in
the telemetry window. Both are whole-column numpy work, no per-call array calls.

The window is anything with the ``record`` method of :class:`CallWindow` (the agent's
:class:`~edge_agent._telemetry.WindowAggregator`): this module needs neither the telemetry
code nor the protobuf messages, so the predictor that imports it stays light.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from itertools import chain
from typing import NamedTuple, Protocol, cast

import numpy as np
import numpy.typing as npt

from edge_agent._model import LoadedModel
from edge_agent._recent import RecentPredictions

__all__ = ["CallTuple", "CallWindow", "Handoff", "PendingCalls", "record_calls", "stack_records"]

log = logging.getLogger("edgeloop.agent")

DEFAULT_LIMIT = 100_000

#: One served call as the predictor appends it: ``(model, raw, inputs, outputs, latency_ms,
#: ids)``, the fields of :class:`PendingCalls` in its order.
CallTuple = tuple[LoadedModel, np.ndarray, np.ndarray | None, np.ndarray, float, list[str]]


class PendingCalls(NamedTuple):
    """Calls the predictor handed over, by field: the i-th entry of each is the i-th call's."""

    model: tuple[LoadedModel, ...]
    #: the raw records as given (copied when they were the caller's own array); a single
    #: record may come without its batch axis (see :func:`stack_records`)
    raw: tuple[np.ndarray, ...]
    #: the model's input, for reconstruction models only (nothing else reads it, and
    #: freeing it with the call keeps the allocator's blocks warm)
    inputs: tuple[np.ndarray | None, ...]
    outputs: tuple[np.ndarray, ...]
    latency_ms: tuple[float, ...]  # each call's, for all its records
    ids: tuple[list[str], ...]  # one prediction id per record

    @classmethod
    def of(cls, calls: Sequence[CallTuple]) -> list[PendingCalls]:
        """``calls`` (not empty) by field, one group per model (in order of first call)."""
        first = calls[0][0]
        if all(call[0] is first for call in calls):  # no model switch in this tick
            return [cls._make(zip(*calls, strict=True))]
        by_model: dict[int, list[CallTuple]] = {}
        for call in calls:
            by_model.setdefault(id(call[0]), []).append(call)
        return [cls._make(zip(*group, strict=True)) for group in by_model.values()]

    @property
    def served_by(self) -> LoadedModel:
        """The model of a group made by :meth:`of`."""
        return self.model[0]

    def prediction_ids(self) -> list[str]:
        return list(chain.from_iterable(self.ids))


class CallWindow(Protocol):
    """Where :func:`record_calls` puts the calls: a telemetry window."""

    def record(
        self,
        *,
        raw: np.ndarray,
        outputs: np.ndarray,
        model_inputs: np.ndarray | None = None,
        latency_ms: npt.NDArray[np.float64],
        prediction_ids: Sequence[str],
    ) -> None: ...


class Handoff:
    """The calls waiting for the telemetry tick, and what draining them remembers.

    ``sink`` is bounded (``limit``): if the tick ever falls that far behind, the oldest
    calls are left out of telemetry (never out of serving)."""

    def __init__(self, *, recent: RecentPredictions, limit: int = DEFAULT_LIMIT) -> None:
        self.sink: deque[CallTuple] = deque(maxlen=limit)
        self.recent = recent
        self.unremembered = 0  # calls whose output could not be remembered

    def drain(self) -> list[PendingCalls]:
        """Take every call handed over so far (appends may go on meanwhile), one group per
        model, and remember what they predicted."""
        sink = self.sink
        calls = [sink.popleft() for _ in range(len(sink))]
        if not calls:
            return []
        groups = PendingCalls.of(calls)
        for group in groups:
            self.remember(group)
        return groups

    def remember(self, calls: PendingCalls) -> None:
        """One batched ``remember`` for one model's calls (cheap per call)."""
        model = calls.served_by
        try:
            outs = calls.outputs
            outputs = (
                np.concatenate(outs)  # [n, k] each: already one row per prediction
                if all(o.ndim == 2 for o in outs)
                else np.concatenate(
                    [o.reshape(len(ids), -1) for o, ids in zip(outs, calls.ids, strict=True)]
                )
            )
            self.recent.remember(
                ids=calls.prediction_ids(),
                outputs=outputs,
                model=str(model.manifest.get("name", "")),
                version=str(model.manifest.get("version", "")),
                classes=model.task != "reconstruction",
            )
        except Exception:  # one odd output must not stop telemetry
            self.unremembered += len(calls.ids)
            if self.unremembered <= 3:
                log.exception("could not remember a prediction's output")


def record_calls(window: CallWindow, calls: PendingCalls) -> None:
    """Record one model's calls in ``window``, as one batch."""
    model = calls.served_by
    sizes = np.fromiter(map(len, calls.ids), dtype=np.int64, count=len(calls.ids))
    model_inputs = None
    if model.task == "reconstruction":  # the predictor hands their inputs over: no None
        model_inputs = np.concatenate(cast(tuple[np.ndarray, ...], calls.inputs))
    window.record(
        raw=stack_records(calls.raw, record_dims=len(model.preprocess.raw_shape), sizes=sizes),
        model_inputs=model_inputs,
        outputs=np.concatenate(calls.outputs),
        latency_ms=np.repeat(
            np.fromiter(calls.latency_ms, dtype=np.float64, count=len(sizes))
            / np.maximum(sizes, 1),
            sizes,
        ),
        prediction_ids=calls.prediction_ids(),
    )


def stack_records(
    arrays: Sequence[np.ndarray], *, record_dims: int, sizes: npt.NDArray[np.intp]
) -> np.ndarray:
    """One ``[N, *record_shape]`` batch from per-call arrays that are batches
    (``record_dims + 1`` axes) or single records without the batch axis (``record_dims``);
    ``sizes``: the records in each. One C-level call when they are all of one kind."""
    ndims = {a.ndim for a in arrays}
    if ndims == {record_dims}:
        return np.stack(arrays)
    if ndims == {record_dims + 1}:
        return np.concatenate(arrays)
    return np.concatenate(
        [
            a.reshape(int(n), *a.shape[a.ndim - record_dims :])
            for a, n in zip(arrays, sizes, strict=True)
        ]
    )
