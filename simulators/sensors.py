"""Simulated sensors: records drawn from a dataset, with drift injected from some time on.

A :class:`DataSource` holds raw records (float32, ``[N, *shape]``) and optional labels: the
sklearn digits for tests, or a ``hub.datasets`` version's records (its ``.npz``). A
:class:`SensorStream` is one device's stream: it samples records with its own generator and
applies the :class:`Drift` s that are active for it (``start_s`` after the fleet's start).

Drift kinds (``intensity`` in [0, 1]): ``noise`` (gaussian, std = intensity x feature
range), ``rotation`` (image records: up to 90 degrees x intensity), ``contrast`` (towards
the mean by intensity), ``brightness`` (+ intensity x range), ``knockout`` (that share of
features set to the minimum), ``scale`` (image records: zoomed in about the centre by
1 + intensity, as if the camera moved closer), ``label_shift`` (that share of draws from
``classes``), ``unseen_class`` (that share of draws from ``classes`` held out until the drift
starts, or inverted records when no classes are named).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from simulators.scenario import DriftSpec

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, kw_only=True)
class DataSource:
    features: F32  # [N, *record shape], raw (what the device's sensor produces)
    labels: npt.NDArray[np.int64] | None
    low: float
    high: float
    # each record's id in the dataset it came from (``digits-00042``): labels name it as their
    # source, so the hub splits field records by source and never scores a model on its own
    ids: npt.NDArray[np.str_] | None = None

    @classmethod
    def from_arrays(
        cls,
        features: npt.ArrayLike,
        labels: npt.ArrayLike | None,
        ids: npt.ArrayLike | None = None,
    ) -> DataSource:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"a data source needs [N, ...] records, got shape {x.shape}")
        y = None if labels is None else np.asarray(labels, dtype=np.int64)
        if y is not None and len(y) != len(x):
            raise ValueError(f"{len(y)} labels for {len(x)} records")
        names = None if ids is None else np.asarray(ids, dtype=np.str_)
        if names is not None and len(names) != len(x):
            raise ValueError(f"{len(names)} ids for {len(x)} records")
        return cls(features=x, labels=y, low=float(x.min()), high=float(x.max()), ids=names)

    @classmethod
    def load(cls, source: str) -> DataSource:
        """``sklearn:digits``, or a path to a dataset version's records (``.npz``)."""
        if source == "sklearn:digits":
            from sklearn.datasets import load_digits

            digits = load_digits()
            ids = [f"digits-{i:05d}" for i in range(len(digits.target))]  # hub's built-in ids
            return cls.from_arrays(digits.images, digits.target, ids)
        path = Path(source.removeprefix("npz:"))
        if not path.exists():
            raise ValueError(f"data source {source!r}: no such file (or use 'sklearn:digits')")
        from hub.datasets.records import RecordSet

        records = RecordSet.from_npz_bytes(path.read_bytes())
        return cls.from_arrays(records.features, records.labels, records.ids)

    @property
    def record_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    @property
    def span(self) -> float:
        return max(self.high - self.low, 1e-6)


def _image_side(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) >= 2:
        return shape[-2], shape[-1]
    side = math.isqrt(shape[0])
    return (side, side) if side * side == shape[0] else None


def rotate(x: F32, *, degrees: float, fill: float, shape: tuple[int, ...]) -> F32:
    """Rotate image records (flat square or ``[..., H, W]``) about their centre, nearest
    neighbour; records that are not images are returned unchanged."""
    hw = _image_side(shape)
    if hw is None:
        return x
    h, w = hw
    images = x.reshape(len(x), -1, h, w)
    theta = math.radians(degrees)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    src_y = np.rint(cy + (yy - cy) * math.cos(theta) - (xx - cx) * math.sin(theta)).astype(int)
    src_x = np.rint(cx + (yy - cy) * math.sin(theta) + (xx - cx) * math.cos(theta)).astype(int)
    inside = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
    out = np.full_like(images, fill)
    out[..., inside] = images[..., src_y[inside], src_x[inside]]
    return out.reshape(x.shape)


def zoom(x: F32, *, factor: float, fill: float, shape: tuple[int, ...]) -> F32:
    """Zoom image records (flat square or ``[..., H, W]``) about their centre by ``factor``
    (> 1: closer), nearest neighbour; records that are not images are returned unchanged."""
    hw = _image_side(shape)
    if hw is None or factor <= 0:
        return x
    h, w = hw
    images = x.reshape(len(x), -1, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    src_y = np.rint(cy + (yy - cy) / factor).astype(int)
    src_x = np.rint(cx + (xx - cx) / factor).astype(int)
    inside = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
    out = np.full_like(images, fill)
    out[..., inside] = images[..., src_y[inside], src_x[inside]]
    return out.reshape(x.shape)


@dataclass(frozen=True, kw_only=True)
class Drift:
    """A drift on one device: a transform of records (and of draws) from ``start_s`` on."""

    spec: DriftSpec

    def active(self, elapsed_s: float) -> bool:
        return elapsed_s >= self.spec.start_s

    def transform(self, x: F32, *, source: DataSource, rng: np.random.Generator) -> F32:
        kind, k = self.spec.kind, self.spec.intensity
        lo, hi, span = source.low, source.high, source.span
        if kind == "noise":
            x = x + rng.normal(0.0, k * span, size=x.shape).astype(np.float32)
        elif kind == "rotation":
            x = rotate(x, degrees=90.0 * k, fill=lo, shape=source.record_shape)
        elif kind == "contrast":
            x = x.mean() + (x - x.mean()) * (1.0 - k)
        elif kind == "brightness":
            x = x + k * span
        elif kind == "knockout":
            x = np.where(rng.random(x.shape) < k, lo, x)
        elif kind == "scale":
            x = zoom(x, factor=1.0 + k, fill=lo, shape=source.record_shape)
        else:
            return x
        return np.clip(x, lo, hi).astype(np.float32)


@dataclass(kw_only=True)
class SensorStream:
    """One device's sensor: ``read(n, elapsed_s)`` gives ``n`` records and their labels."""

    source: DataSource
    rng: np.random.Generator
    drifts: list[Drift] = field(default_factory=list)
    held_out: frozenset[int] = frozenset()  # classes no device sees before its drift starts

    def __post_init__(self) -> None:
        labels = self.source.labels
        self._all = np.arange(len(self.source.features))
        if labels is None or not self.held_out:
            self._seen = self._all
        else:
            self._seen = self._all[~np.isin(labels, sorted(self.held_out))]
        self._by_class: dict[int, npt.NDArray[np.int64]] = {}
        if labels is not None:
            for cls in np.unique(labels).tolist():
                self._by_class[int(cls)] = self._all[labels == cls]

    def _from_classes(self, classes: list[int], n: int) -> npt.NDArray[np.int64]:
        pools = [self._by_class[c] for c in classes if c in self._by_class]
        if not pools:
            return self.rng.choice(self._seen, size=n)
        pool = np.concatenate(pools)
        return self.rng.choice(pool, size=n)

    def read(self, n: int, *, elapsed_s: float) -> tuple[F32, npt.NDArray[np.int64] | None]:
        reading = self.draw(n, elapsed_s=elapsed_s)
        return reading.features, reading.labels

    def draw(self, n: int, *, elapsed_s: float) -> Reading:
        """``n`` records with their labels and the ids of the source records they came from."""
        active = [d for d in self.drifts if d.active(elapsed_s)]
        index = self.rng.choice(self._seen, size=n)
        inverted = np.zeros(n, dtype=bool)
        for drift in active:
            spec = drift.spec
            if spec.kind not in {"label_shift", "unseen_class"}:
                continue
            mixed = self.rng.random(n) < spec.intensity
            if not mixed.any():
                continue
            if spec.classes:
                index[mixed] = self._from_classes(spec.classes, int(mixed.sum()))
            elif spec.kind == "unseen_class":
                inverted |= mixed
        x = self.source.features[index].copy()
        if inverted.any():
            x[inverted] = self.source.high + self.source.low - x[inverted]
        for drift in active:
            x = drift.transform(x, source=self.source, rng=self.rng)
        labels = None if self.source.labels is None else self.source.labels[index]
        sources = None if self.source.ids is None else self.source.ids[index]
        return Reading(features=x, labels=labels, sources=sources)


@dataclass(frozen=True, kw_only=True)
class Reading:
    """What one sensor read produced: records, their labels, their source records' ids."""

    features: F32
    labels: npt.NDArray[np.int64] | None
    sources: npt.NDArray[np.str_] | None
