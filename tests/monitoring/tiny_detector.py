"""A small detector of our own (chi-square over the feature sketches, Bonferroni), so the
service tests do not depend on which detectors ``hub.monitoring.detectors`` ships."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from hub.monitoring._cache import DetectorSettings
from hub.monitoring._reference import VersionReference


class TinyChi2:
    name = "tiny_chi2"
    needs = frozenset({"feature_counts"})

    def __init__(self, ref: VersionReference, *, false_alarm_rate: float) -> None:
        self._reference = [np.asarray(f["counts"], np.float64) for f in ref.profile["features"]]
        self.threshold = self.threshold_at(false_alarm_rate)
        self.score = 0.0
        self.p_value: float | None = None
        self.drift_detected = False
        self.updates = 0

    def update(self, window: Any) -> None:
        worst = 0.0
        for counts, ref in zip(window.feature_counts, self._reference, strict=True):
            a, b = counts.astype(np.float64), ref  # two-sample chi-square (both are samples)
            k1, k2 = np.sqrt(b.sum() / a.sum()), np.sqrt(a.sum() / b.sum())
            both = np.maximum(a + b, 1e-9)
            worst = max(worst, float(((k1 * a - k2 * b) ** 2 / both).sum()))
        self.score, self.updates = worst, self.updates + 1
        self.drift_detected = worst > self.threshold

    def threshold_at(self, false_alarm_rate: float) -> float:
        alpha = false_alarm_rate / len(self._reference)
        return float(stats.chi2.isf(alpha, df=len(self._reference[0]) - 1))

    def reset(self) -> None:
        self.score, self.drift_detected = 0.0, False


def tiny_factory(ref: VersionReference, settings: DetectorSettings) -> list[Any]:
    return [TinyChi2(ref, false_alarm_rate=settings.false_alarm_rate)]
