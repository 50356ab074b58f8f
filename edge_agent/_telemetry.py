"""Telemetry on the device: one ``TelemetryWindow`` per window, and ``Feedback`` batches.

:class:`WindowAggregator` closes a window every ``window_s`` seconds or ``max_predictions``
served requests, whichever comes first (the caller polls ``due()``); windows tile time.
In a window (rules in docs/PROTOCOL.md):

* ``features``: per reference-profile feature, counts over the profile's edges by the
  protocol rule (``model_packager.profile.histogram``) and min/max/sum/sum_sq/count over
  finite values; NaN and infinite values only count in ``non_finite``.
* ``latency``: each of a batch's ``N`` records counts once at ``latency_ms / N``, so the
  counts add up to ``count`` (for the usual batch of one: the request latency).
* classifiers: ``output_counts[k]`` = records with top-1 class ``k``; ``confidence`` = top-1
  softmax probability over the profile's confidence edges.
* reconstruction: ``output_counts`` = histogram of the per-record score (mean squared error,
  ``reconstruction_error``) over the profile's score edges; ``confidence`` unset.
* ``shadow``: totals of ``record_shadow``; a different candidate restarts them.
* ``samples``: uniform reservoir (Algorithm R) of <= ``reservoir_size`` raw records (off by
  default: raw inputs may be private).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from model_packager.profile import CONFIDENCE_EDGES, ReferenceProfile, reconstruction_error
from proto import messages_pb2 as pb

__all__ = ["DEFAULT_LATENCY_EDGES_MS", "WindowAggregator"]

DEFAULT_LATENCY_EDGES_MS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250)
_BLOCK_CELLS = 1 << 20  # comparisons per block when sketching a large batch

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
AnyArray = npt.NDArray[Any]


def ms(t: float) -> int:
    return int(t * 1000)


def _bins(values: FloatArray, edges: FloatArray) -> IntArray:
    return np.searchsorted(edges, values, side="right")


@dataclass
class _Shadow:
    key: tuple[str, str, str]  # model, version, bundle_digest
    compared: int = 0
    agreed: int = 0
    delta_sum: float = 0.0
    errors: int = 0


class WindowAggregator:
    """Running sketch of the current window; :meth:`close` emits it and starts the next."""

    def __init__(
        self,
        *,
        device_id: str,
        model: str,
        version: str,
        bundle_digest: str,
        profile: Mapping[str, Any],
        task: Literal["classification", "reconstruction"],
        window_s: float = 60.0,
        max_predictions: int = 1000,
        reservoir_size: int = 0,
        latency_edges_ms: Sequence[float] = DEFAULT_LATENCY_EDGES_MS,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        if window_s <= 0 or max_predictions <= 0 or reservoir_size < 0:
            raise ValueError("window_s and max_predictions must be > 0, reservoir_size >= 0")
        ref = ReferenceProfile.model_validate(profile)
        expected = {"classification": "classes", "reconstruction": "score"}[task]
        if ref.output.kind != expected:
            raise ValueError(f"task {task!r} needs a profile output of kind {expected!r}")
        self.device_id, self.model, self.version = device_id, model, version
        self.bundle_digest, self.task = bundle_digest, task
        self.window_s, self.max_predictions = window_s, max_predictions
        self.reservoir_size = reservoir_size
        self._clock, self._rng = clock, np.random.default_rng(seed)
        self._lock = threading.Lock()

        feats = ref.features
        self._names = [f.name for f in feats]
        self._index = np.array([f.index for f in feats], dtype=np.intp)
        self._dims = int(self._index.max()) + 1 if feats else 0
        self._gather = not np.array_equal(self._index, np.arange(len(feats)))
        self._widths = [len(f.edges) for f in feats]
        width = max(self._widths, default=0)
        # edges padded with +inf to one [E, F] block: "x >= edge" counted along E is the
        # searchsorted(side="right") bin of each value, for every feature at once
        self._edges = np.full((width, len(feats)), np.inf)
        for j, f in enumerate(feats):
            self._edges[: len(f.edges), j] = f.edges
        self._stride = width + 1
        self._offsets = np.arange(len(feats), dtype=np.intp) * self._stride
        # non-decreasing edges (the protocol's; the +inf padding keeps it): a large batch's
        # counts come from each feature's sorted values, no per-value bin index
        self._edges_by_feature = np.ascontiguousarray(self._edges.T)
        self._monotone = bool((self._edges[1:] >= self._edges[:-1]).all())

        self._lat_edges = [float(e) for e in latency_edges_ms]
        if self._lat_edges != sorted(set(self._lat_edges)):
            raise ValueError("latency_edges_ms must be strictly ascending")
        self._conf_edges = np.asarray(
            ref.output.confidence.edges if ref.output.confidence else CONFIDENCE_EDGES, np.float64
        )
        self._score_edges = np.asarray(ref.output.score.edges if ref.output.score else [], float)
        classes = task == "classification"
        self._n_out = len(ref.output.class_counts) if classes else len(self._score_edges) + 1
        self._reset(start=clock())

    def _reset(self, *, start: float) -> None:
        n_feat = len(self._names)
        self._start = start
        self._count = self._errors = self._seen = 0
        self._latency = np.zeros(len(self._lat_edges) + 1, np.int64)
        self._outputs = np.zeros(self._n_out, np.int64)
        self._confidence = np.zeros(len(self._conf_edges) + 1, np.int64)
        self._fcounts = np.zeros(n_feat * self._stride, np.int64)
        self._fmin, self._fmax = np.full(n_feat, np.inf), np.full(n_feat, -np.inf)
        self._fsum, self._fsq = np.zeros(n_feat), np.zeros(n_feat)
        self._fcount, self._fbad = np.zeros(n_feat, np.int64), np.zeros(n_feat, np.int64)
        self._shadow: _Shadow | None = None
        self._samples: list[pb.Sample] = []

    # ------------------------------------------------------------------ recording
    def record(
        self,
        *,
        raw: npt.ArrayLike,
        outputs: npt.ArrayLike,
        model_inputs: npt.ArrayLike | None = None,
        latency_ms: float | npt.NDArray[np.float64],
        prediction_ids: Sequence[str],
    ) -> None:
        """Add a batch: ``raw`` [N, *raw_shape] as the device saw it, the model's ``outputs``
        (logits, or the reconstruction with ``model_inputs`` for reconstruction models).
        ``latency_ms``: for the whole batch (split evenly), or one value per record."""
        x = np.asarray(raw)
        out = np.asarray(outputs)
        if x.ndim == 0 or out.ndim == 0 or out.shape[0] != x.shape[0]:
            raise ValueError("raw and outputs need the same leading batch axis")
        n = x.shape[0]
        if len(prediction_ids) != n:
            raise ValueError(f"{len(prediction_ids)} prediction ids for a batch of {n}")
        if n == 0:
            return
        flat = x.reshape(n, -1).astype(np.float64, copy=False)
        if flat.shape[1] < self._dims:
            raise ValueError(f"records have {flat.shape[1]} values, the profile {self._dims}")
        cols = flat[:, self._index] if self._gather else flat
        predicted: IntArray | None = None
        if self.task == "classification":
            logits = out.reshape(n, -1).astype(np.float64, copy=False)
            predicted = logits.argmax(axis=1)
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            top1 = 1.0 / z.sum(axis=1)  # softmax probability of the arg-max class
            top1 = top1[np.isfinite(top1)]
            out_bins = predicted
        else:
            if model_inputs is None:
                raise ValueError("reconstruction telemetry needs model_inputs")
            score = reconstruction_error(out, np.asarray(model_inputs))
            out_bins = _bins(score[np.isfinite(score)], self._score_edges)
        now = self._clock()
        with self._lock:
            self._sketch(cols)
            self._count += n
            lat = np.asarray(latency_ms, dtype=np.float64)
            if lat.ndim == 0:  # one latency for the whole batch: split evenly
                per = float(lat) / n
                if np.isfinite(per):
                    self._latency[bisect.bisect_right(self._lat_edges, per)] += n
            else:  # one latency per record
                lat = lat[np.isfinite(lat)]
                self._latency += np.bincount(
                    np.searchsorted(self._lat_edges, lat, side="right"),
                    minlength=len(self._latency),
                )
            if predicted is not None:
                conf = _bins(top1, self._conf_edges)
                self._confidence += np.bincount(conf, minlength=len(self._confidence))
            add = np.bincount(out_bins, minlength=len(self._outputs))
            if len(add) > len(self._outputs):  # a class the profile never saw
                self._outputs = np.pad(self._outputs, (0, len(add) - len(self._outputs)))
            self._outputs += add
            if self.reservoir_size:
                self._reservoir(x, predicted, prediction_ids, ms(now))

    def _sketch(self, cols: FloatArray) -> None:
        n_feat = len(self._names)
        step = max(1, _BLOCK_CELLS // max(1, self._edges.size))
        for first in range(0, cols.shape[0], step):
            block = cols[first : first + step]
            finite = np.isfinite(block)
            ok = bool(finite.all())  # the common case skips the masking
            clean = block if ok else np.where(finite, block, 0.0)
            m = block.shape[0]
            if m <= 16:  # one broadcast compare: fastest for small batches
                bins = (block[:, None, :] >= self._edges).sum(axis=1) + self._offsets
                hits = bins.ravel() if ok else bins[finite]
                if m == 1:
                    self._fcounts[hits] += 1  # one record: the indices are distinct
                else:
                    self._fcounts += np.bincount(hits, minlength=self._fcounts.size)
            elif ok and self._monotone:
                # values >= edge k of each feature, from its sorted values (one C sort of
                # [F, m], then a binary search of the few edges); bin b = ge[b-1] - ge[b]
                ranked = np.sort(block.T, axis=1)
                ge = np.zeros((n_feat, self._stride + 1), np.int64)
                ge[:, 0] = m
                for j, edges in enumerate(self._edges_by_feature):
                    ge[j, 1:-1] = m - ranked[j].searchsorted(edges, side="left")
                self._fcounts += (ge[:, :-1] - ge[:, 1:]).ravel()
            else:  # one [N, F] compare per edge rank: no [N, E, F] temporary to reduce
                rank = np.zeros(block.shape, np.uint8 if len(self._edges) < 256 else np.intp)
                for row in self._edges:
                    rank += block >= row
                bins = rank + self._offsets
                hits = bins.ravel() if ok else bins[finite]
                self._fcounts += np.bincount(hits, minlength=self._fcounts.size)
            lo = block if ok else np.where(finite, block, np.inf)
            hi = block if ok else np.where(finite, block, -np.inf)
            np.minimum(self._fmin, lo.min(axis=0), out=self._fmin)
            np.maximum(self._fmax, hi.max(axis=0), out=self._fmax)
            self._fsum += clean.sum(axis=0)
            self._fsq += np.einsum("ij,ij->j", clean, clean)
            good = block.shape[0] if ok else finite.sum(axis=0)
            self._fcount += good
            self._fbad += block.shape[0] - good

    def _reservoir(self, x: AnyArray, pred: IntArray | None, ids: Sequence[str], at: int) -> None:
        k, n = self.reservoir_size, x.shape[0]

        def sample(i: int) -> pb.Sample:
            s = pb.Sample(
                prediction_id=ids[i],
                values=np.asarray(x[i], np.float32).ravel().tolist(),
                shape=list(x.shape[1:]),
                at=at,
            )
            if pred is not None:
                s.predicted_label = int(pred[i])
            return s

        fill = min(n, max(0, k - len(self._samples)))
        self._samples.extend(sample(i) for i in range(fill))
        if fill < n:  # Algorithm R: record number t replaces slot j ~ U[0, t) when j < k
            t = self._seen + np.arange(fill + 1, n + 1)
            slots = (self._rng.random(n - fill) * t).astype(np.int64)
            for i in np.flatnonzero(slots < k):
                self._samples[int(slots[i])] = sample(fill + int(i))
        self._seen += n

    def record_error(self, count: int = 1) -> None:
        """Requests that failed (not counted in ``count`` nor sketched)."""
        with self._lock:
            self._errors += count

    def record_shadow(
        self,
        *,
        compared: int,
        agreed: int,
        latency_delta_ms: float,
        model: str,
        version: str,
        bundle_digest: str,
        errors: int = 0,
    ) -> None:
        """``compared`` requests also run by the candidate, ``agreed`` of them with the same
        top-1; ``latency_delta_ms`` is their mean (candidate - active) latency."""
        if not 0 <= agreed <= compared or errors < 0:
            raise ValueError("need 0 <= agreed <= compared and errors >= 0")
        with self._lock:
            s = self._shadow
            if s is None or s.key != (model, version, bundle_digest):
                s = self._shadow = _Shadow((model, version, bundle_digest))
            s.compared += compared
            s.agreed += agreed
            s.delta_sum += latency_delta_ms * compared
            s.errors += errors

    # ------------------------------------------------------------------ windows
    def due(self) -> bool:
        """Whether the window is full (``max_predictions``) or ``window_s`` old."""
        with self._lock:
            return (
                self._count >= self.max_predictions or self._clock() - self._start >= self.window_s
            )

    def empty(self) -> bool:
        with self._lock:
            return self._count == 0 and self._errors == 0 and self._shadow is None

    def close(self, *, seq: int, dropped_windows: int = 0) -> pb.TelemetryWindow:
        """The window so far as a ``TelemetryWindow`` numbered ``seq``; starts the next."""
        if seq < 1:
            raise ValueError("seq starts at 1")
        with self._lock:
            end = self._clock()
            start_ms = ms(self._start)
            window = pb.TelemetryWindow(
                device_id=self.device_id,
                seq=seq,
                model=self.model,
                version=self.version,
                bundle_digest=self.bundle_digest,
                window_start=start_ms,
                window_end=max(start_ms, ms(end)),
                count=self._count,
                errors=self._errors,
                latency=pb.Histogram(edges=self._lat_edges, counts=self._latency.tolist()),
                output_counts=self._outputs.tolist(),
                features=self._feature_sketches(),
                samples=self._samples,
                dropped_windows=dropped_windows,
            )
            if self.task == "classification":
                window.confidence.edges[:] = self._conf_edges.tolist()
                window.confidence.counts[:] = self._confidence.tolist()
            if (s := self._shadow) is not None:
                window.shadow.model, window.shadow.version, window.shadow.bundle_digest = s.key
                window.shadow.compared, window.shadow.agreed = s.compared, s.agreed
                window.shadow.latency_delta_ms = s.delta_sum / s.compared if s.compared else 0.0
                window.shadow.errors = s.errors
            self._reset(start=end)
            return window

    def _feature_sketches(self) -> list[pb.FeatureSketch]:
        counts = self._fcounts.reshape(len(self._names), self._stride).tolist()
        seen = self._fcount > 0
        lo = np.where(seen, self._fmin, 0.0).tolist()
        hi = np.where(seen, self._fmax, 0.0).tolist()
        total, sq = self._fsum.tolist(), self._fsq.tolist()
        n, bad, index = self._fcount.tolist(), self._fbad.tolist(), self._index.tolist()
        rows = zip(self._names, index, counts, self._widths, lo, hi, total, sq, strict=True)
        sketches = [
            pb.FeatureSketch(name=nm, index=i, counts=c[: w + 1], min=a, max=b, sum=t, sum_sq=q)
            for nm, i, c, w, a, b, t, q in rows
        ]
        for sketch, k, z in zip(sketches, n, bad, strict=True):
            sketch.count, sketch.non_finite = k, z
        return sketches
