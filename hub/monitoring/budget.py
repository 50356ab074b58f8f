"""The fleet's false-alarm budget: ``B`` false alerts per model version per day, whatever
the number of devices, groups and detectors.

Every prediction is tested once per level (its device, its group, its version), so each
level's windows partition the version's predictions. A window of ``n`` predictions at one
of ``L`` levels gets the false-alarm rate

    alpha = B / L * n / P

(``P``: the version's predictions per day), shared by its ``D`` drift detectors (each
``alpha / D``). Summed over a day, each level's windows spend ``B / L``; by the union bound
(Bonferroni over levels, windows and detectors) the expected number of false alerts per day
is at most ``B``, at 50 devices or 10,000. A degradation test on ``k`` new labels spends
``B / L * k / Q`` likewise (``Q``: labels per day).

``P`` and ``Q`` are measured (:class:`RateMeter`: each batch's count at its newest row's
arrival, over the last hour; the first batch's count over no time at all makes an early
rate high, so early windows get smaller rates: the error is on the safe side). Thresholds
at such rates (1e-8 per device window at 10,000 devices) are far below a bootstrap's
resolution: the detectors extrapolate their nulls' tails (``detectors._calibration.Tail``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Budget", "RateMeter"]

DAY_S = 86_400.0
LEVELS = ("device", "group", "version")
HORIZON_S = 3600.0  # the meter's memory
MIN_SPAN_S = 1.0  # the shortest span a rate is taken over (less data: a higher rate)


@dataclass(frozen=True)
class Budget:
    """``per_day`` expected false alerts per model version per day, over all scopes."""

    per_day: float

    def __post_init__(self) -> None:
        if not self.per_day > 0:
            raise ValueError(f"false alarms per day must be > 0, not {self.per_day}")

    def rate(self, *, n: int, per_day: float, detectors: int = 1) -> float:
        """The false-alarm rate of one detector on a window of ``n`` predictions (labels)
        out of ``per_day`` a day, one of ``detectors`` on it."""
        share = self.per_day / len(LEVELS) * n / max(per_day, float(n), 1.0)
        return min(max(share / max(detectors, 1), 1e-300), 0.5)


class RateMeter:
    """Counts per day, from (evidence time, count) pairs over the last hour."""

    def __init__(self) -> None:
        self._seen: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, at: datetime, count: int) -> None:
        t = at.timestamp()
        self._seen.append((t, count))
        self._total += count
        while self._seen and self._seen[0][0] < t - HORIZON_S:
            self._total -= self._seen.popleft()[1]

    def per_day(self) -> float:
        """The measured rate, per day; 0 before anything was seen."""
        if not self._seen:
            return 0.0
        span = max(self._seen[-1][0] - self._seen[0][0], MIN_SPAN_S)
        return self._total / span * DAY_S
