"""The predictor: raw records in, outputs + label names / anomaly scores out, with shadow mode.

Thread-safe without a lock on the read path: the active model (and the shadow) live in one
immutable, precompiled object that :meth:`Predictor.swap` replaces with a single reference
assignment, so a prediction runs wholly on the model it started with. A short lock guards
the id counter; writers (swap, observers) take their own lock.

Per call the overhead over a bare ``session.run`` is the transform (two ufuncs on cached
float32 statistics, bit-identical to ``Preprocess.apply``), an argmax, ids and observers.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent._handoff import CallTuple
from edge_agent._model import LoadedModel
from edge_agent._prediction import (
    NoModelLoaded,
    Prediction,
    PredictionError,
    PredictorStats,
    ShadowObserver,
    ShadowReport,
    reconstruction_error,
)
from edge_agent.inputs import as_records, records_error

__all__ = [
    "NoModelLoaded",
    "Observer",
    "Prediction",
    "PredictionError",
    "Predictor",
    "PredictorStats",
    "ShadowObserver",
    "ShadowReport",
    "reconstruction_error",
]

log = logging.getLogger(__name__)
_F32 = np.dtype(np.float32)
_subtract, _divide = np.subtract, np.divide

# (raw batch, model inputs, outputs, latency_ms, ids, model): the telemetry hook.
Observer = Callable[[np.ndarray, np.ndarray, np.ndarray, float, list[str], LoadedModel], None]


class _Compiled:
    """A :class:`LoadedModel` with everything a call needs precomputed (immutable)."""

    def __init__(self, model: LoadedModel) -> None:
        pre = model.preprocess
        self.model = model
        self.run = model.runtime.run
        # a runtime's binding underneath ``run`` (``OnnxRuntime.direct``): called by the
        # predictor itself, one Python frame less per call
        self.direct: tuple[Callable[..., Any], list[str], str] | None = getattr(
            model.runtime, "direct", None
        )
        self.raw_shape = tuple(pre.raw_shape)
        self.reshape = (-1, *pre.input_shape)
        # The same float32 statistics Preprocess.apply builds on every call.
        self.mean = np.asarray(pre.mean, dtype=np.float64).astype(np.float32)
        self.scale = np.asarray(pre.scale, dtype=np.float64).astype(np.float32)
        # x - 0 == x bit for bit: a zero mean that does not broadcast x to another shape is
        # skipped on the hot path (one ufunc call, ~0.4 us of a ~25 us int8 CNN call)
        batch_one = (1, *pre.input_shape)
        self.zero_mean = not self.mean.any() and (
            np.broadcast_shapes(self.mean.shape, batch_one) == batch_one
        )
        # the quotient can go into the difference's array: scale widens no shape
        self.divide_in_place = np.broadcast_shapes(self.scale.shape, batch_one) == batch_one
        self.labels = model.labels if model.task == "classification" else None
        self.reconstruction = model.task == "reconstruction"
        self.threshold = model.anomaly_threshold
        self.name: str = model.name
        self.version: str = model.version
        self.variant: str = model.variant_file

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Bit-identical to ``Preprocess.apply`` (the same float32 operations)."""
        x = x.astype(_F32, copy=False).reshape(self.reshape)
        return _divide(x if self.zero_mean else _subtract(x, self.mean), self.scale)

    def shape_error(self, shape: tuple[int, ...]) -> str:
        return records_error(shape, self.raw_shape, model=f"{self.name}@{self.version}")


@dataclass(frozen=True, slots=True)
class _Shadow:
    target: _Compiled
    fraction: float
    atol: float


class Predictor:
    """Serve the active model; see the module docstring for the threading model."""

    def __init__(
        self,
        *,
        model: LoadedModel | None = None,
        device_id: str = "device",
        boot_id: str | None = None,
        seed: int | None = None,
    ) -> None:
        self._prefix = f"{device_id}-{boot_id or secrets.token_hex(4)}-"
        self._active: _Compiled | None = None if model is None else _Compiled(model)
        self._shadow: _Shadow | None = None
        self._observers: tuple[Observer, ...] = ()
        self._sink: deque[CallTuple] | None = None
        self._shadow_observers: tuple[ShadowObserver, ...] = ()
        self._write_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._next_id = 0
        self._calls = self._errors = self._observer_errors = 0
        self._shadow_runs = self._shadow_errors = 0

    def set_sink(self, sink: deque[CallTuple] | None) -> None:
        """Hand every call to ``sink`` (a bounded deque the consumer drains, see
        :class:`~edge_agent._handoff.Handoff`) as a :data:`~edge_agent._handoff.CallTuple`
        ``(model, raw, inputs, outputs, latency_ms, prefix, first, n)`` (the ids are
        ``prefix + str(first + i)``, formatted again only if read), the fields of
        :class:`~edge_agent._handoff.PendingCalls`: the telemetry path that costs the
        request least. ``raw`` is copied when it is the caller's own array; a single record
        may come without its batch axis (reshape to ``(len(ids), *raw_shape)``). ``inputs``
        (the model's input) only for reconstruction models, else ``None``: nothing else
        reads it, and freeing it with the call keeps the allocator's blocks warm."""
        self._sink = sink

    # -- the model ------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel | None:
        active = self._active
        return None if active is None else active.model

    def swap(self, model: LoadedModel | None) -> LoadedModel | None:
        """Make ``model`` the active one (None unloads); returns the previous one."""
        compiled = None if model is None else _Compiled(model)
        with self._write_lock:
            previous, self._active = self._active, compiled
        return None if previous is None else previous.model

    def set_shadow(
        self, model: LoadedModel | None, *, fraction: float = 1.0, atol: float = 1e-2
    ) -> None:
        """Also run ``model`` on a sampled ``fraction`` of calls (None stops shadowing).

        It runs after the active model, on the same raw records, and never changes what is
        served. Agreement: same argmax for classifiers; for reconstruction models the same
        anomaly flag at each model's reference p99 error when both manifests have one,
        else every output within ``atol`` (also used for other tasks).
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {fraction}")
        shadow = None if model is None else _Shadow(_Compiled(model), fraction, atol)
        with self._write_lock:
            self._shadow = shadow

    @property
    def shadow(self) -> LoadedModel | None:
        shadow = self._shadow
        return None if shadow is None else shadow.target.model

    # -- hooks ----------------------------------------------------------------------------

    def add_observer(self, callback: Observer) -> None:
        with self._write_lock:
            self._observers = (*self._observers, callback)

    def remove_observer(self, callback: Observer) -> None:
        with self._write_lock:
            self._observers = tuple(o for o in self._observers if o is not callback)

    def add_shadow_observer(self, callback: ShadowObserver) -> None:
        with self._write_lock:
            self._shadow_observers = (*self._shadow_observers, callback)

    def remove_shadow_observer(self, callback: ShadowObserver) -> None:
        with self._write_lock:
            self._shadow_observers = tuple(o for o in self._shadow_observers if o is not callback)

    @property
    def count(self) -> int:
        """Calls that returned a prediction."""
        return self._calls

    @property
    def errors(self) -> int:
        """Calls the runtime failed (:class:`PredictionError`)."""
        return self._errors

    def stats(self) -> PredictorStats:
        with self._count_lock:
            return PredictorStats(
                calls=self._calls,
                records=self._next_id,
                errors=self._errors,
                observer_errors=self._observer_errors,
                shadow_runs=self._shadow_runs,
                shadow_errors=self._shadow_errors,
            )

    # -- predicting -----------------------------------------------------------------------

    def predict(self, raw: npt.ArrayLike) -> Prediction:
        """Predict a batch ``[N, *raw_shape]`` or one record ``[*raw_shape]`` of raw values,
        or the same flat (``[N, prod(raw_shape)]``, ``[prod(raw_shape)]``): the input rule of
        :mod:`edge_agent.inputs`.

        Raises ``ValueError`` (wrong shape/dtype), :class:`NoModelLoaded`, or
        :class:`PredictionError` when the runtime fails.
        """
        start = perf_counter()
        active = self._active
        if active is None:
            raise NoModelLoaded("no model is loaded yet")
        x = raw if type(raw) is np.ndarray else np.asarray(raw)
        shape = x.shape
        if shape[1:] == active.raw_shape:
            n = shape[0]
            if not n:
                raise ValueError("raw records: got an empty batch")
        elif shape == active.raw_shape:
            n = 1  # one record: the reshape below adds the batch axis
        else:  # flat records, or a wrong shape: the input rule (the branches above inline it)
            shaped = as_records(x, active.raw_shape, model=f"{active.name}@{active.version}")
            x = shaped.copy() if x is raw else shaped  # a view of the caller's array: own it
            shape, n = x.shape, x.shape[0]
        if x.dtype is not _F32:
            if x.dtype.kind not in "biuf":
                raise ValueError(f"raw records must be real numbers, got dtype {x.dtype}")
            x = x.astype(_F32, copy=False)
        # active.transform(x), inlined: this is the hot path
        x_in = x.reshape(active.reshape)
        if active.zero_mean or not active.divide_in_place:
            inputs = _divide(
                x_in if active.zero_mean else _subtract(x_in, active.mean), active.scale
            )
        else:  # the same float32 operations; the quotient into the difference's array
            inputs = _subtract(x_in, active.mean)
            _divide(inputs, active.scale, out=inputs)
        scores: np.ndarray | None = None
        try:
            direct = active.direct
            if direct is not None:
                outputs = direct[0](direct[1], {direct[2]: inputs}, None)[0]
            else:
                outputs = active.run(inputs)
            if active.labels is None and active.reconstruction:
                scores = reconstruction_error(outputs, inputs)
        except Exception as exc:
            with self._count_lock:
                self._errors += 1
            raise PredictionError(
                f"{active.name}@{active.version} ({active.variant}) failed on a batch of "
                f"shape {list(inputs.shape)}: {type(exc).__name__}: {exc}"
            ) from exc
        with self._count_lock:
            first = self._next_id
            self._next_id = first + n
            self._calls += 1
        prefix = self._prefix
        latency_ms = (perf_counter() - start) * 1000.0
        sink, observers, shadow = self._sink, self._observers, self._shadow
        if sink is not None:  # the cheapest hand-off: one C-level append, no Python call
            # raw as bytes (float32, C order: ``n`` records), a copy the caller's reuse of
            # its array cannot touch; the tick joins them in one C call
            sink.append(
                (
                    active.model,
                    x.tobytes(),
                    inputs if active.reconstruction else None,
                    outputs,
                    latency_ms,
                    prefix,
                    first,
                    n,
                )
            )
        prediction = Prediction(prefix, first, n, outputs, scores, latency_ms, active)
        if observers or shadow is not None:
            ids = prediction.ids
            if n == 1 and len(shape) == len(active.raw_shape):
                x = x[np.newaxis]  # hooks always see a batch
            for observer in observers:
                try:
                    observer(x, inputs, outputs, latency_ms, ids, active.model)
                except Exception:
                    self._failed("observer", observer)
            if shadow is not None and (
                shadow.fraction >= 1.0 or self._rng.random() < shadow.fraction
            ):
                self._run_shadow(shadow, active, x, inputs, outputs, latency_ms, ids)
        return prediction

    def _failed(self, kind: str, what: object) -> None:
        """Count and log (sparingly: a broken hook must not flood the log) a failure."""
        with self._count_lock:
            if kind == "shadow":
                self._shadow_errors += 1
                count = self._shadow_errors
            else:
                self._observer_errors += 1
                count = self._observer_errors
        if count <= 3 or count % 1000 == 0:
            log.exception("%s %r failed (%d such failures so far)", kind, what, count)

    def _run_shadow(
        self,
        shadow: _Shadow,
        active: _Compiled,
        x: np.ndarray,
        inputs: np.ndarray,
        outputs: np.ndarray,
        latency_ms: float,
        ids: list[str],
    ) -> None:
        target = shadow.target
        error, method, agreed, delta_ms = "", "failed", 0, 0.0
        try:
            if target.raw_shape != active.raw_shape:
                raise ValueError(target.shape_error(x.shape))
            start = perf_counter()
            shadow_inputs = target.transform(x)
            shadow_outputs = target.run(shadow_inputs)
            delta_ms = (perf_counter() - start) * 1000.0 - latency_ms
            method, agreed = _agreement(
                active, inputs, outputs, target, shadow_inputs, shadow_outputs, shadow.atol
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self._failed("shadow", f"{target.name}@{target.version}")
        else:
            with self._count_lock:
                self._shadow_runs += 1
        report = ShadowReport(
            ids=ids,
            compared=0 if error else len(x),
            agreed=agreed,
            errors=len(x) if error else 0,
            latency_delta_ms=0.0 if error else delta_ms,
            method=method,
            active=active.model,
            shadow=target.model,
            error=error,
        )
        for callback in self._shadow_observers:
            try:
                callback(report)
            except Exception:
                self._failed("shadow observer", callback)


def _agreement(
    active: _Compiled,
    inputs: np.ndarray,
    outputs: np.ndarray,
    shadow: _Compiled,
    shadow_inputs: np.ndarray,
    shadow_outputs: np.ndarray,
    atol: float,
) -> tuple[str, int]:
    n = len(outputs)
    a, s = outputs.reshape(n, -1), shadow_outputs.reshape(n, -1)
    if active.labels is not None and shadow.labels is not None:
        return "argmax", int(np.count_nonzero(a.argmax(axis=1) == s.argmax(axis=1)))
    if (
        active.reconstruction
        and shadow.reconstruction
        and active.threshold is not None
        and shadow.threshold is not None
    ):
        flag_a = reconstruction_error(outputs, inputs) > active.threshold
        flag_s = reconstruction_error(shadow_outputs, shadow_inputs) > shadow.threshold
        return "anomaly_flag", int(np.count_nonzero(flag_a == flag_s))
    if a.shape != s.shape:
        return f"max_abs_diff<={atol:g}", 0
    close = np.max(np.abs(a.astype(np.float64) - s), axis=1) <= atol
    return f"max_abs_diff<={atol:g}", int(np.count_nonzero(close))
