"""The hand-off from the predictor to the telemetry tick.

Every served call is appended by the predictor to the bounded deque :attr:`Handoff.sink`
as a :data:`CallTuple`: one C-level append of a tuple literal, no lock and no Python call
on the request path (a NamedTuple or slotted dataclass built there costs 0.1-0.2 us more
per prediction). The agent's tick drains it (:meth:`Handoff.drain`) into
:class:`PendingCalls`: the calls by field (one ``zip``, C-level), one group per model that
served them. A call carries its raw records as bytes (joined by the tick in one C call) and
its ids as ``prefix`` + the counter of its first record (formatted only if read:
:class:`PredictionIds`). Draining remembers what each call predicted (for feedback labels,
:class:`~edge_agent._recent.RecentPredictions`, a ring keyed by counter);
:func:`record_calls` records a group in the telemetry window. Both are whole-column numpy
work, no per-call array calls.

The window is anything with the ``record`` method of :class:`CallWindow` (the agent's
:class:`~edge_agent._telemetry.WindowAggregator`): this module needs neither the telemetry
code nor the protobuf messages, so the predictor that imports it stays light.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from itertools import chain, repeat, starmap
from operator import attrgetter
from typing import NamedTuple, Protocol, cast, overload

import numpy as np
import numpy.typing as npt

from edge_agent._model import LoadedModel
from edge_agent._recent import RecentPredictions

__all__ = [
    "CallTuple",
    "CallWindow",
    "Handoff",
    "PendingCalls",
    "PredictionIds",
    "record_calls",
]

log = logging.getLogger("edgeloop.agent")

DEFAULT_LIMIT = 100_000
_ndim = attrgetter("ndim")
_UNSTACKED = (None,)  # PendingCalls.stacked_outputs, until drain sets it

#: One served call as the predictor appends it: ``(model, raw, inputs, outputs, latency_ms,
#: prefix, first, n)``, the fields of :class:`PendingCalls` in its order: its ``n`` records'
#: prediction ids are ``prefix + str(first + i)``.
CallTuple = tuple[LoadedModel, bytes, np.ndarray | None, np.ndarray, float, str, int, int]


class PendingCalls(NamedTuple):
    """Calls the predictor handed over, by field: the i-th entry of each is the i-th call's."""

    model: tuple[LoadedModel, ...]
    #: the raw records as float32 bytes in C order (``n`` records of the model's raw shape):
    #: a copy, whatever the caller does with its array later; joined in one C call
    raw: tuple[bytes, ...]
    #: the model's input, for reconstruction models only (nothing else reads it, and
    #: freeing it with the call keeps the allocator's blocks warm)
    inputs: tuple[np.ndarray | None, ...]
    outputs: tuple[np.ndarray, ...]
    latency_ms: tuple[float, ...]  # each call's, for all its records
    prefix: tuple[str, ...]  # the predictor's id prefix
    first: tuple[int, ...]  # the counter of the call's first record
    n: tuple[int, ...]  # the call's records
    #: set by :meth:`Handoff.drain`: ``outputs`` concatenated, when each is ``[n, k]``
    stacked_outputs: np.ndarray | None = None

    @classmethod
    def of(cls, calls: Sequence[CallTuple]) -> list[PendingCalls]:
        """``calls`` (not empty) by field, one group per model (in order of first call)."""
        whole = cls._make(chain(zip(*calls, strict=True), _UNSTACKED))
        first = whole.model[0]
        if whole.model.count(first) == len(calls):  # no model switch in this tick (C-level)
            return [whole]
        by_model: dict[int, list[CallTuple]] = {}
        for call in calls:
            by_model.setdefault(id(call[0]), []).append(call)
        return [
            cls._make(chain(zip(*group, strict=True), _UNSTACKED)) for group in by_model.values()
        ]

    @property
    def served_by(self) -> LoadedModel:
        """The model of a group made by :meth:`of`."""
        return self.model[0]

    def sizes(self) -> npt.NDArray[np.int64]:
        """Records per call."""
        return np.fromiter(self.n, dtype=np.int64, count=len(self.n))

    def counters(self) -> npt.NDArray[np.int64]:
        """Each record's id counter, in call order."""
        first = np.fromiter(self.first, dtype=np.int64, count=len(self.first))
        if len(self.n) == sum(self.n):  # batch-1 calls: one counter each
            return first
        sizes = self.sizes()
        starts = np.cumsum(sizes) - sizes
        return np.repeat(first - starts, sizes) + np.arange(int(sizes.sum()), dtype=np.int64)

    def prediction_ids(self) -> PredictionIds:
        """One id per record, in call order (formatted when read)."""
        prefixes = self.prefix
        if prefixes.count(prefixes[0]) == len(prefixes):
            return PredictionIds(prefixes[0], self.counters())
        return PredictionIds(
            np.repeat(np.array(prefixes, dtype=object), self.sizes()).tolist(), self.counters()
        )


class PredictionIds(Sequence[str]):
    """Prediction ids ``prefix + str(counter)``, formatted only when read (telemetry needs
    their number; only the window's reservoir reads any)."""

    __slots__ = ("counters", "prefix")

    def __init__(self, prefix: str | list[str], counters: npt.NDArray[np.int64]) -> None:
        self.prefix, self.counters = prefix, counters

    def __len__(self) -> int:
        return len(self.counters)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        prefix = self.prefix if isinstance(self.prefix, str) else self.prefix[index]
        return f"{prefix}{int(self.counters[index])}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PredictionIds | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


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

    def drain(self, max_calls: int | None = None) -> list[PendingCalls]:
        """Take every call handed over so far (at most ``max_calls``, the oldest; appends
        may go on meanwhile), one group per model, and remember what they predicted."""
        sink = self.sink
        take = len(sink) if max_calls is None else min(len(sink), max_calls)
        calls = list(starmap(sink.popleft, repeat((), take)))  # C-level loop
        if not calls:
            return []
        groups = PendingCalls.of(calls)
        for i, group in enumerate(groups):
            if set(map(_ndim, group.outputs)) == {2}:  # concatenated once, for both uses
                groups[i] = group = group._replace(stacked_outputs=np.concatenate(group.outputs))
            self.remember(group)
        return groups

    def remember(self, calls: PendingCalls) -> None:
        """One batched ``remember`` for one model's calls: whole-column numpy."""
        model = calls.served_by
        try:
            outs = calls.outputs
            outputs = (
                calls.stacked_outputs  # [n, k] each: already one row per prediction
                if calls.stacked_outputs is not None
                else np.concatenate([o.reshape(n, -1) for o, n in zip(outs, calls.n, strict=True)])
            )
            ids = calls.prediction_ids()
            name = str(model.manifest.get("name", ""))
            version = str(model.manifest.get("version", ""))
            classes = model.task != "reconstruction"
            if isinstance(ids.prefix, str):
                self.recent.remember_counted(
                    prefix=ids.prefix,
                    counters=ids.counters,
                    outputs=outputs,
                    model=name,
                    version=version,
                    classes=classes,
                )
            else:  # several predictors behind one sink (not the agent's)
                self.recent.remember(
                    ids=list(ids), outputs=outputs, model=name, version=version, classes=classes
                )
        except Exception:  # one odd output must not stop telemetry
            self.unremembered += len(calls.n)
            if self.unremembered <= 3:
                log.exception("could not remember a prediction's output")


def record_calls(window: CallWindow, calls: PendingCalls) -> None:
    """Record one model's calls in ``window``, as one batch."""
    model = calls.served_by
    sizes = calls.sizes()
    model_inputs = None
    if model.task == "reconstruction":  # the predictor hands their inputs over: no None
        model_inputs = np.concatenate(cast(tuple[np.ndarray, ...], calls.inputs))
    latency = np.fromiter(calls.latency_ms, dtype=np.float64, count=len(sizes))
    if len(sizes) != int(sizes.sum()):  # each record at its call's latency split evenly
        latency = np.repeat(latency / np.maximum(sizes, 1), sizes)
    window.record(
        raw=np.frombuffer(b"".join(calls.raw), dtype=np.float32).reshape(
            -1, *model.preprocess.raw_shape
        ),
        model_inputs=model_inputs,
        outputs=(
            calls.stacked_outputs
            if calls.stacked_outputs is not None
            else np.concatenate(calls.outputs)
        ),
        latency_ms=latency,
        prediction_ids=calls.prediction_ids(),
    )
