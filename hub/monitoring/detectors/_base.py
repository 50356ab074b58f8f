"""What every drift detector compares, observes and promises (numpy only, no I/O).

* :class:`Reference`: the bundle's reference profile (binned feature sketches, class counts,
  confidence or anomaly-score histogram), optionally the raw reference sample and the
  accuracy measured at evaluation.
* :class:`Window`: one observation, an aggregate over one or more telemetry windows, binned
  exactly like the reference (``model_packager.profile.histogram``).
* :class:`Detector`: the river-style protocol: ``update(window)`` then read
  ``drift_detected`` / ``score`` / ``threshold`` / ``p_value``; ``reset()``.

The bottom of the package: every detector module imports these, none of them the registry
(``_registry``: the table of detector kinds and ``build_detectors``), which imports them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from model_packager.profile import ReferenceProfile

__all__ = ["Detector", "Reference", "Window", "scope_copy"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class Reference:
    """What the detectors compare against.

    ``feature_counts[j]`` has ``len(feature_edges[j]) + 1`` entries (docs/PROTOCOL.md rule).
    Classifiers carry ``class_counts`` and the top-1 ``confidence`` histogram, and (profiles
    since the joint table) ``class_confidence``: per predicted class, its reference rows'
    confidence histogram, the model's outputs on the reference rows as a window sketches
    them; score models (reconstruction) carry ``score_edges`` / ``score_counts`` instead.
    ``accuracy_count`` is how many labelled records ``accuracy`` was measured on (bounds the
    error rate the accuracy detectors assume away from 0 and 1; ``None``: 1e-3).
    """

    feature_edges: list[FloatArray]
    feature_counts: list[IntArray]
    class_counts: IntArray | None
    confidence_edges: FloatArray | None
    confidence_counts: IntArray | None
    samples: FloatArray | None = None  # (n, d) raw reference inputs (for MMD)
    accuracy: float | None = None
    accuracy_count: int | None = None
    score_edges: FloatArray | None = None
    score_counts: IntArray | None = None
    class_confidence: IntArray | None = None  # (classes, confidence bins)

    @classmethod
    def from_profile(
        cls,
        profile: ReferenceProfile,
        *,
        samples: npt.ArrayLike | None = None,
        accuracy: float | None = None,
        accuracy_count: int | None = None,
    ) -> Reference:
        """The detector view of a bundle's ``ReferenceProfile`` (``samples`` are flattened
        to ``(n, d)``; ``accuracy_count`` defaults to the profile's ``num_samples``)."""
        out = profile.output
        raw = None
        if samples is not None:
            arr = np.asarray(samples, dtype=np.float64)
            raw = arr.reshape(len(arr), -1)
        classes = out.kind == "classes"
        conf = out.confidence if classes else None
        score = out.score if not classes else None
        joint = None
        if classes and conf and out.class_confidence:
            joint = np.asarray(out.class_confidence, np.int64)
            if joint.shape != (len(out.class_counts), len(conf.counts)) or (joint < 0).any():
                raise ValueError(f"class_confidence has shape {joint.shape}, not classes x bins")
        if accuracy is not None and not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], not {accuracy}")
        return cls(
            feature_edges=[np.asarray(f.edges, np.float64) for f in profile.features],
            feature_counts=[np.asarray(f.counts, np.int64) for f in profile.features],
            class_counts=np.asarray(out.class_counts, np.int64) if classes else None,
            confidence_edges=np.asarray(conf.edges, np.float64) if conf else None,
            confidence_counts=np.asarray(conf.counts, np.int64) if conf else None,
            samples=raw,
            accuracy=accuracy,
            accuracy_count=(
                accuracy_count
                if accuracy_count is not None or accuracy is None
                else profile.num_samples
            ),
            score_edges=np.asarray(score.edges, np.float64) if score else None,
            score_counts=np.asarray(score.counts, np.int64) if score else None,
            class_confidence=joint,
        )


@dataclass(frozen=True, kw_only=True)
class Window:
    """One observation: an aggregate over >= 1 telemetry windows (counts add up).

    Fields a detector does not need may stay ``None``. ``class_counts`` are the windows'
    ``output_counts`` for classifiers; for score models the same field of the wire message
    is the anomaly-score histogram and goes in ``score_counts``.
    """

    n: int  # predictions in it
    feature_counts: list[IntArray] | None = None  # same binning as the reference
    class_counts: IntArray | None = None
    confidence_counts: IntArray | None = None
    samples: FloatArray | None = None  # (k, d) reservoir inputs
    correct: npt.NDArray[np.bool_] | None = None  # per labelled prediction, in time order
    score_counts: IntArray | None = None


@runtime_checkable
class Detector(Protocol):
    """A drift detector. ``update`` with each window, then read the verdict for it.

    ``drift_detected`` is False before any data and after ``reset()``; ``score`` is the
    statistic, comparable to ``threshold`` (drift when ``score > threshold``);
    ``p_value`` is the calibrated (bootstrap) p-value of the last window where the
    detector has one, else ``None``. A window that lacks a field in ``needs`` is no
    observation (no verdict, state unchanged); malformed data raises ``ValueError``.

    What a detector builds from its reference (arrays, kernels, calibration tables) is
    read-only once built, and its per-window state is reassigned, never changed in place,
    so that :func:`scope_copy` gives each monitored scope a detector of a few hundred bytes.
    """

    name: str  # e.g. "feature_chi2"
    needs: frozenset[str]  # the Window fields it uses, e.g. {"feature_counts"}

    def update(self, window: Window) -> None: ...

    @property
    def drift_detected(self) -> bool: ...

    @property
    def score(self) -> float: ...

    @property
    def threshold(self) -> float: ...

    @property
    def p_value(self) -> float | None: ...

    def threshold_at(self, false_alarm_rate: float) -> float:
        """The threshold for another false-alarm rate (the last window's size), extrapolated
        beyond the bootstrap by its fitted tail: the monitor's fleet budget sets the rate
        per window."""
        ...

    def reset(self) -> None: ...


class _Resettable(Protocol):
    def reset(self) -> None: ...


DetectorT = TypeVar("DetectorT", bound=_Resettable)


def scope_copy(detector: DetectorT) -> DetectorT:
    """An independent detector for one more scope: fresh per-window state, the reference's
    arrays and the calibration tables shared with ``detector`` (see :class:`Detector`)."""
    found = copy.copy(detector)
    found.reset()
    return found
