"""Telemetry rows summed into detector windows of about ``window_size`` predictions.

Each row's histograms (feature sketches, class counts, confidence or score histogram) are
checked against the version's reference and laid out in one flat count vector
(:class:`Layout`), so a batch is a matrix and a window is a sum of its rows. A scope's open
window lives in memory (:class:`ScopeWindow`: a count vector, a few ids); the database keeps
only where the scope's last *completed* window ended (its cursor row's ``boundary``), so a
restarted hub rebuilds an open window by re-reading the scope's rows past it (fewer than a
window's worth) instead of writing every scope's counts at every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from hub.core.errors import EdgeloopError
from hub.monitoring._reference import VersionReference
from hub.monitoring._samples import aware, reservoir_add
from hub.tables.packed import feature_count_bytes, feature_counts

IntArray = npt.NDArray[np.int64]


class BadRow(EdgeloopError, ValueError):
    """A telemetry row that does not fit the version's reference (skipped, counted)."""


class Layout:
    """Where each histogram of a row goes in a flat vector: the reference's features in
    index order, then the class counts (score models: the score histogram), then the
    confidence histogram."""

    def __init__(self, ref: VersionReference) -> None:
        self.kind = ref.kind
        self.classes = ref.score_bins if ref.kind == "score" else ref.classes
        self.features: dict[int, slice] = {}
        at = 0
        for index in sorted(ref.feature_bins):
            self.features[index] = slice(at, at + ref.feature_bins[index])
            at += ref.feature_bins[index]
        self.class_slice = slice(at, at + self.classes)
        at += self.classes
        self.confidence_slice = slice(at, at + ref.confidence_bins)
        self.size = at + ref.confidence_bins
        # a packed row's sketches in this order and these sizes take the vectorised path
        self._order = list(self.features)
        self._sizes = np.array([w.stop - w.start for w in self.features.values()], np.int64)
        self._bounds = np.concatenate(([0], np.cumsum(self._sizes)))

    def _packed_features(self, packed: bytes) -> IntArray | None:
        """The features block of a packed row straight from its varint bytes (one numpy
        decode for all sketches), or None when the row is not the plain case (sketches
        missing, out of order, of other sizes, unpacked counts): the general path then
        reads it sketch by sketch and says what is wrong, if anything."""
        try:
            sketches = feature_count_bytes(packed)
        except ValueError as exc:
            raise BadRow(f"malformed feature sketch ({exc!r})") from exc
        if [index for index, _ in sketches] != self._order:
            return None
        blobs = [blob for _, blob in sketches]
        b = np.frombuffer(b"".join(blobs), np.uint8)
        if b.size == self._bounds[-1] and (not b.size or b.max() < 0x80):
            return b.astype(np.int64)  # every count < 128: one byte each (the usual case)
        ends = np.flatnonzero(b < 0x80)  # the last byte of each varint
        if ends.size != self._bounds[-1] or (ends.size and ends[-1] != b.size - 1):
            return None
        offsets = np.cumsum([len(blob) for blob in blobs])
        if not np.array_equal(np.searchsorted(ends, offsets), self._bounds[1:]):
            return None  # a sketch's counts do not end where its bytes do
        starts = np.concatenate(([0], ends[:-1] + 1))
        group = np.repeat(np.arange(ends.size), ends - starts + 1)
        shift = 7 * (np.arange(b.size) - starts[group])
        if shift.max() > 63:
            raise BadRow("malformed counts (varint longer than 64 bits)")
        values = np.bitwise_or.reduceat(
            (b & 0x7F).astype(np.uint64) << shift.astype(np.uint64), starts
        )
        if values.max() > np.iinfo(np.int64).max:
            raise BadRow("malformed counts (beyond a signed 64-bit integer)")
        return values.astype(np.int64)

    def row_vector(self, row: Any) -> IntArray:
        """One row's counts (``row``: anything with ``count``, ``packed``, ``features``,
        ``output_counts``, ``confidence`` as stored); :class:`BadRow` if they do not fit.
        The sketches come from the packed column (the device's protobuf, no JSON: decoded
        with numpy, :meth:`_packed_features`), or from the JSON column of rows written
        before it (``hub.tables.packed.feature_counts``)."""
        if row.count < 0:
            raise BadRow(f"negative count {row.count}")
        packed = getattr(row, "packed", None)
        block = self._packed_features(packed) if packed else None
        flat: list[Any] = [] if block is not None else self._feature_list(row)
        classes = list(row.output_counts or [])
        if self.kind == "score":
            if classes and len(classes) != self.classes:
                raise BadRow(
                    f"score histogram has {len(classes)} counts, the reference {self.classes}"
                )
        elif len(classes) > self.classes:
            raise BadRow(f"{len(classes)} classes, the reference has {self.classes}")
        flat.extend(classes + [0] * (self.classes - len(classes)))
        confidence = list((row.confidence or {}).get("counts") or [])
        bins = self.confidence_slice.stop - self.confidence_slice.start
        if confidence and len(confidence) != bins:
            raise BadRow(f"confidence histogram has {len(confidence)} counts, the reference {bins}")
        flat.extend(confidence or [0] * bins)
        try:
            out = np.asarray(flat, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadRow(f"malformed counts ({exc!r})") from exc
        if block is not None:
            out = np.concatenate((block, out))
        if out.shape != (self.size,) or (out.size and out.min() < 0):
            raise BadRow("negative or malformed counts")
        return out

    def _feature_list(self, row: Any) -> list[Any]:
        """The features part of a row's counts as a list, sketch by sketch (JSON rows, and
        packed rows off the vectorised path)."""
        try:
            sketches = feature_counts(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRow(f"malformed feature sketch ({exc!r})") from exc
        got: dict[int, Sequence[Any]] = {}
        for index, counts in sketches:
            try:
                size = len(counts)
            except TypeError as exc:
                raise BadRow(f"malformed feature sketch ({exc!r})") from exc
            where = self.features.get(index)
            if where is None:
                raise BadRow(f"feature index {index} is not in the reference profile")
            if size != where.stop - where.start:
                raise BadRow(
                    f"feature {index}: {size} counts, the reference has {where.stop - where.start}"
                )
            got[index] = counts
        flat: list[Any] = []
        for index, where in self.features.items():
            flat.extend(got.get(index) or [0] * (where.stop - where.start))
        return flat

    def thin(self, counts: IntArray, n: int, *, seed: int) -> IntArray:
        """Each histogram of ``counts`` with more than ``n`` counts reduced to ``n`` drawn
        without replacement (multivariate hypergeometric, seeded): the histograms of ``n``
        of the window's predictions (each on its own: the features' joint sample is not
        kept, which makes a joint test conservative)."""
        rng = np.random.default_rng([seed, n])
        out = counts.copy()
        for where in [*self.features.values(), self.class_slice, self.confidence_slice]:
            block = counts[where]
            if int(block.sum()) > n:
                out[where] = rng.multivariate_hypergeometric(block, n)
        return out

    def window_kwargs(self, n: int, counts: IntArray) -> dict[str, Any]:
        """Keyword arguments for ``detectors.Window`` (histograms without data left out)."""
        kwargs: dict[str, Any] = {"n": n}
        blocks = [counts[s] for s in self.features.values()]
        if blocks and all(int(b.sum()) > 0 for b in blocks):
            kwargs["feature_counts"] = blocks
        classes = counts[self.class_slice]
        if classes.size and int(classes.sum()) > 0:
            kwargs["score_counts" if self.kind == "score" else "class_counts"] = classes
        confidence = counts[self.confidence_slice]
        if confidence.size and int(confidence.sum()) > 0:
            kwargs["confidence_counts"] = confidence
        return kwargs


@dataclass(kw_only=True)
class ScopeWindow:
    """One scope's open window, in memory: its summed counts and where its rows are."""

    counts: IntArray
    n: int = 0
    rows: int = 0
    first_id: int = 0
    last_id: int = 0
    # a reservoir of the window's raw input samples (``FieldSample`` ids, see _samples)
    sample_ids: list[int] = field(default_factory=list)
    samples_seen: int = 0
    last_sample_id: int = 0
    evidence_at: datetime | None = None  # when the newest of its rows reached the hub

    @classmethod
    def empty(cls, layout: Layout) -> ScopeWindow:
        return cls(counts=np.zeros(layout.size, np.int64))

    def add(
        self,
        row_id: int,
        n: int,
        counts: IntArray,
        samples: Sequence[int] = (),
        *,
        at: datetime | None = None,
    ) -> None:
        self.n += n
        self.rows += 1
        self.first_id = self.first_id or row_id
        self.last_id = row_id
        self.counts += counts
        if at is not None:
            at = aware(at)
            self.evidence_at = at if self.evidence_at is None else max(self.evidence_at, at)
        self.add_samples(samples)

    def add_samples(self, samples: Sequence[int]) -> None:
        if samples:
            self.samples_seen = reservoir_add(self.sample_ids, self.samples_seen, samples)
            self.last_sample_id = max(self.last_sample_id, max(samples))

    def detail(self) -> dict[str, Any]:
        return {
            "predictions": self.n,
            "telemetry_windows": self.rows,
            "first_row_id": self.first_id,
            "last_row_id": self.last_id,
        }


def scopes_of(*, model: str, version: str, device_id: str, group: str) -> list[str]:
    """The scopes one row counts in: its device, its group, its model version."""
    return [f"device:{device_id}", f"group:{group or 'default'}", f"version:{model}@{version}"]
