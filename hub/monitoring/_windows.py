"""Telemetry rows summed into detector windows of about ``window_size`` predictions.

A scope's partial window is plain JSON (``Partial.to_json``) kept in its cursor row, so a
hub restart continues the window where it stood instead of dropping or re-reading rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hub.monitoring._reference import VersionReference
from hub.monitoring._samples import reservoir_add
from hub.tables.fleet import TelemetryWindowRow


class BadRow(ValueError):
    """A telemetry row that does not fit the version's reference (skipped, counted)."""


@dataclass(frozen=True, kw_only=True)
class RowCounts:
    """One row's counts, checked against the reference's binning."""

    n: int
    features: dict[int, list[int]]
    classes: list[int]
    confidence: list[int]


def row_counts(row: TelemetryWindowRow, ref: VersionReference) -> RowCounts:
    if row.count < 0:
        raise BadRow(f"negative count {row.count}")
    features: dict[int, list[int]] = {}
    for sketch in row.features or []:
        try:
            index, counts = int(sketch["index"]), [int(c) for c in sketch["counts"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRow(f"malformed feature sketch ({exc!r})") from exc
        expected = ref.feature_bins.get(index)
        if expected is None:
            raise BadRow(f"feature index {index} is not in the reference profile")
        if len(counts) != expected or min(counts, default=0) < 0:
            raise BadRow(f"feature {index}: {len(counts)} counts, the reference has {expected}")
        features[index] = counts
    classes = [int(c) for c in row.output_counts or []]
    if ref.kind == "score":
        if classes and len(classes) != ref.score_bins:
            raise BadRow(
                f"score histogram has {len(classes)} counts, the reference {ref.score_bins}"
            )
    elif ref.classes and len(classes) > ref.classes:
        raise BadRow(f"{len(classes)} classes, the reference has {ref.classes}")
    confidence = [int(c) for c in (row.confidence or {}).get("counts") or []]
    if confidence and len(confidence) != ref.confidence_bins:
        raise BadRow(
            f"confidence histogram has {len(confidence)} counts, the reference "
            f"{ref.confidence_bins}"
        )
    return RowCounts(n=row.count, features=features, classes=classes, confidence=confidence)


@dataclass(kw_only=True)
class Partial:
    """Counts summed over the rows of one scope since its last evaluated window."""

    n: int = 0
    rows: int = 0
    first_id: int = 0
    last_id: int = 0
    features: dict[int, list[int]] = field(default_factory=dict)
    classes: list[int] = field(default_factory=list)
    confidence: list[int] = field(default_factory=list)
    # a reservoir of the window's raw input samples (``FieldSample`` ids, see _samples)
    sample_ids: list[int] = field(default_factory=list)
    samples_seen: int = 0

    def add(self, row_id: int, counts: RowCounts, *, samples: Sequence[int] = ()) -> None:
        self.n += counts.n
        self.rows += 1
        self.first_id = self.first_id or row_id
        self.last_id = row_id
        if samples:
            self.samples_seen = reservoir_add(self.sample_ids, self.samples_seen, samples)
        for index, values in counts.features.items():
            self.features[index] = _add(self.features.get(index, []), values)
        self.classes = _add(self.classes, counts.classes)
        self.confidence = _add(self.confidence, counts.confidence)

    def window_kwargs(self, ref: VersionReference) -> dict[str, Any]:
        """Keyword arguments for ``detectors.Window`` (fields without data left out)."""
        kwargs: dict[str, Any] = {"n": self.n}
        order = sorted(ref.feature_bins)
        if self.features and all(i in self.features for i in order):
            kwargs["feature_counts"] = [np.asarray(self.features[i], dtype=np.int64) for i in order]
        if self.classes and ref.kind == "score":
            kwargs["score_counts"] = np.asarray(self.classes, dtype=np.int64)
        elif self.classes and ref.classes:
            padded = self.classes + [0] * (ref.classes - len(self.classes))
            kwargs["class_counts"] = np.asarray(padded, dtype=np.int64)
        if self.confidence:
            kwargs["confidence_counts"] = np.asarray(self.confidence, dtype=np.int64)
        return kwargs

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "rows": self.rows,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "features": {str(k): v for k, v in self.features.items()},
            "classes": self.classes,
            "confidence": self.confidence,
            "sample_ids": self.sample_ids,
            "samples_seen": self.samples_seen,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partial:
        if not data:
            return cls()
        return cls(
            n=int(data.get("n", 0)),
            rows=int(data.get("rows", 0)),
            first_id=int(data.get("first_id", 0)),
            last_id=int(data.get("last_id", 0)),
            features={int(k): list(v) for k, v in (data.get("features") or {}).items()},
            classes=list(data.get("classes") or []),
            confidence=list(data.get("confidence") or []),
            sample_ids=[int(i) for i in data.get("sample_ids") or []],
            samples_seen=int(data.get("samples_seen", 0)),
        )


def _add(total: list[int], more: list[int]) -> list[int]:
    if len(total) < len(more):
        total = total + [0] * (len(more) - len(total))
    return [t + (more[i] if i < len(more) else 0) for i, t in enumerate(total)]


def scopes_of(*, model: str, version: str, device_id: str, group: str) -> list[str]:
    """The scopes one row counts in: its device, its group, its model version."""
    return [f"device:{device_id}", f"group:{group or 'default'}", f"version:{model}@{version}"]
