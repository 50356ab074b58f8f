"""Live accuracy from label feedback, and the tests that call it degraded.

Labels arrive as :class:`~hub.tables.fleet.FeedbackLabelRow` (``label`` = ground truth,
``predicted_label`` = what the device answered); a label is *correct* when the two agree.
Two tests flag degradation against the accuracy the version was evaluated at:

- :func:`degradation_test`: over the last labels of a scope, the one-sided Wilson upper
  bound (at the false-alarm rate) lies more than ``margin`` below the evaluated accuracy;
- :class:`AccuracyCusum`: a Bernoulli log-likelihood-ratio CUSUM on the ordered
  correctness stream (H0: the evaluated accuracy, H1: ``margin`` lower) fires when its
  statistic crosses ``ln(1 / false_alarm_rate) + ln(arl_labels)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Any

from sqlalchemy import Integer, case, func
from sqlmodel import Session, col, select

from hub.tables.fleet import FeedbackLabelRow

VARIANT_PREFERENCE = (("onnx", "int8"), ("onnx", "fp32"), ("tflite", "int8"), ("tflite", "fp32"))


@dataclass(frozen=True, kw_only=True)
class AccuracyEstimate:
    """``correct`` of ``n`` labels; ``low``/``high``: two-sided Wilson interval (None if n = 0)."""

    n: int
    correct: int
    accuracy: float | None
    low: float | None
    high: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class DegradationResult:
    score: float  # evaluated accuracy - the one-sided upper bound of the live accuracy
    threshold: float  # the margin
    p_value: float  # H0: live accuracy >= evaluated - margin (normal approximation)
    fired: bool
    estimate: AccuracyEstimate


def wilson(correct: int, n: int, *, z: float) -> tuple[float, float]:
    """Wilson score interval for ``correct / n`` at normal quantile ``z``."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(correct: int, n: int, *, confidence: float = 0.95) -> AccuracyEstimate:
    if n <= 0:
        return AccuracyEstimate(n=0, correct=0, accuracy=None, low=None, high=None)
    low, high = wilson(correct, n, z=NormalDist().inv_cdf(0.5 + confidence / 2))
    return AccuracyEstimate(n=n, correct=correct, accuracy=correct / n, low=low, high=high)


def degradation_test(
    *, correct: int, n: int, reference: float, margin: float, false_alarm_rate: float
) -> DegradationResult:
    """Is the live accuracy confidently more than ``margin`` below ``reference``?"""
    z = NormalDist().inv_cdf(1 - false_alarm_rate)
    _, high = wilson(correct, n, z=z)
    score = reference - high
    p0 = min(max(reference - margin, 1e-6), 1 - 1e-6)
    p_hat = correct / n if n else 1.0
    p_value = NormalDist().cdf((p_hat - p0) / math.sqrt(p0 * (1 - p0) / max(n, 1)))
    return DegradationResult(
        score=score,
        threshold=margin,
        p_value=p_value,
        fired=n > 0 and score > margin,
        estimate=estimate(correct, n),
    )


class AccuracyCusum:
    """Bernoulli LLR CUSUM for a drop of ``margin`` below ``reference`` accuracy."""

    name = "cusum_accuracy"
    needs = frozenset({"correct"})

    def __init__(
        self, *, reference: float, margin: float, false_alarm_rate: float, arl_labels: int
    ) -> None:
        p0 = min(max(reference, 0.01), 0.999)
        p1 = min(max(p0 - margin, 0.001), p0 - 1e-3)
        self._ok = math.log(p1 / p0)  # increment for a correct answer (negative)
        self._bad = math.log((1 - p1) / (1 - p0))  # increment for a wrong one (positive)
        self._arl = max(arl_labels, 2)
        self.threshold = self.threshold_at(false_alarm_rate)
        self.score = 0.0
        self.p_value: float | None = None
        self.drift_detected = False

    def update(self, window: Any) -> None:
        """``window.correct``: bool per labelled prediction, in time order."""
        self.update_stream(
            bool(ok) for ok in (window.correct if window.correct is not None else [])
        )

    def update_stream(self, correct: Iterable[bool]) -> None:
        for ok in correct:
            self.score = max(0.0, self.score + (self._ok if ok else self._bad))
        self.drift_detected = self.score > self.threshold

    def threshold_at(self, false_alarm_rate: float) -> float:
        return math.log(1 / false_alarm_rate) + math.log(self._arl)

    def reset(self) -> None:
        self.score, self.drift_detected = 0.0, False


def evaluated_accuracy(
    manifest: Mapping[str, Any], metrics: Mapping[str, float] | None = None
) -> float | None:
    """The accuracy (0..1) the version was evaluated at: the variant an agent prefers
    (``onnx:int8`` first), else the fp32 gate metric, else the version's ``accuracy`` metric."""
    variants: Sequence[Mapping[str, Any]] = manifest.get("variants") or []
    for fmt, precision in VARIANT_PREFERENCE:
        for v in variants:
            if v.get("format") == fmt and v.get("precision") == precision:
                value = v.get("accuracy")
                if isinstance(value, int | float):
                    return _fraction(float(value))
    fp32 = (manifest.get("quantization") or {}).get("fp32_metric")
    if isinstance(fp32, int | float):
        return _fraction(float(fp32))
    for key in ("accuracy", "test_accuracy", "val_accuracy"):
        if metrics and isinstance(metrics.get(key), int | float):
            return _fraction(float(metrics[key]))
    return None


def _fraction(value: float) -> float:
    """Packager metrics are percentages; training metrics may be fractions."""
    return value / 100.0 if value > 1.0 else value


def _label_filter(model: str, version: str) -> list[Any]:
    return [
        FeedbackLabelRow.model == model,
        FeedbackLabelRow.version == version,
        col(FeedbackLabelRow.label).is_not(None),
        col(FeedbackLabelRow.predicted_label).is_not(None),
    ]


def count_correct(
    session: Session,
    *,
    model: str,
    version: str,
    since: datetime | None = None,
    device_ids: Sequence[str] | None = None,
) -> tuple[int, int]:
    """(correct, n) over the labels of ``model@version`` received since ``since``; without a
    device filter, labels that retention rolled up count too (whole hours from ``since``)."""
    hit = case((col(FeedbackLabelRow.label) == col(FeedbackLabelRow.predicted_label), 1), else_=0)
    query = select(func.count(), func.coalesce(func.sum(hit), 0).cast(Integer)).where(
        *_label_filter(model, version)
    )
    if since is not None:
        query = query.where(col(FeedbackLabelRow.received_at) >= since)
    if device_ids is not None:
        query = query.where(col(FeedbackLabelRow.device_id).in_(list(device_ids)))
    n, correct = session.exec(query).one()
    if device_ids is None:
        from hub.retention.service import rolled_up_correct

        pruned_correct, pruned_n = rolled_up_correct(
            session, model=model, version=version, since=since
        )
        return int(correct or 0) + pruned_correct, int(n or 0) + pruned_n
    return int(correct or 0), int(n or 0)


def live_accuracy(
    session: Session,
    *,
    model: str,
    version: str,
    since: datetime | None = None,
    device_ids: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> AccuracyEstimate:
    """Accuracy of ``model@version`` from label feedback (received since ``since``), with a
    two-sided Wilson interval at ``confidence``; for rollout gates and triggers."""
    correct, n = count_correct(
        session, model=model, version=version, since=since, device_ids=device_ids
    )
    return estimate(correct, n, confidence=confidence)


def recent_correctness(
    session: Session,
    *,
    model: str,
    version: str,
    limit: int,
    device_ids: Sequence[str] | None = None,
) -> tuple[int, int]:
    """(correct, n) over the last ``limit`` labels (by arrival) of a scope."""
    query = (
        select(FeedbackLabelRow.label, FeedbackLabelRow.predicted_label)
        .where(*_label_filter(model, version))
        .order_by(col(FeedbackLabelRow.id).desc())
        .limit(limit)
    )
    if device_ids is not None:
        query = query.where(col(FeedbackLabelRow.device_id).in_(list(device_ids)))
    rows = session.exec(query).all()
    return sum(1 for label, predicted in rows if label == predicted), len(rows)
