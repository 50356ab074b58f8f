"""A rank test on the model's own certainty: has the window's top-1 confidence (classifiers)
or anomaly score (score models) moved against the reference's?

What a model does on inputs it was not trained for (missing pixels, an unseen class, noise)
shows first as a lower confidence, and a G-test on the confidence histogram spends its
degrees of freedom on every way the histogram could change, most of them noise at a
window of 10. This test asks one question, so it needs few records.

Each histogram bin ``b`` gets the reference's mid-rank ``a_b = F(b - 1) + p_b / 2`` (``F``
the reference's cumulative distribution over the bins, ``p_b`` its share in bin ``b``): the
probability that a reference record lies below one in ``b``, counting ties half. A window of
``n`` records with ``c_b`` in bin ``b`` has the mean rank ``R = sum_b c_b a_b / n`` (a
binned Mann-Whitney U / (n m)); under the reference ``E[R] = 1/2`` and
``Var[R] = (sum_b p_b a_b^2 - 1/4) / n``, so ``z = (1/2 - R) / sd`` (classifiers: positive
when confidence fell; score models ``(R - 1/2) / sd``: positive when the score rose) is about
standard normal. Both directions are tested, the model growing less sure with most of the
weight: the p-value is ``min(Phi(-z) / W, Phi(z) / (1 - W), 1)`` with ``W = 0.8`` (a
two-sided test that spends 80% of its rate on the side corruption and novelty move it to),
and the score is its ``-log10``. As for the other detectors that p-value is only a scale: the
threshold is the ``1 - false_alarm_rate`` quantile of the score on windows bootstrapped from
the reference counts (with the reference's own sampling noise).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from hub.monitoring.detectors._base import FloatArray, IntArray, Window
from hub.monitoring.detectors._calibration import NullTable, TableVerdict, n_boot_for, null_counts

__all__ = ["OutputRank"]

LN10 = math.log(10.0)
LESS_SURE = 0.8  # W: the share of the rate spent on "the model grew less sure"


class OutputRank(TableVerdict):
    """Binned rank test of the window's top-1 confidence (or anomaly score) against the
    reference's histogram of it, both directions, 80% of the rate on "less sure" (see the
    module docstring for the statistic).

    >>> import numpy as np
    >>> det = OutputRank(reference_counts=np.array([5, 10, 25, 60, 100]),
    ...                  false_alarm_rate=0.01, window_size=20)
    >>> det.update(Window(n=20, confidence_counts=np.array([0, 1, 2, 6, 11])))
    >>> det.drift_detected
    False
    >>> det.update(Window(n=20, confidence_counts=np.array([3, 4, 5, 4, 4])))
    >>> det.drift_detected, det.score > det.threshold
    (True, True)
    """

    name = "output_rank"
    needs: frozenset[str] = frozenset({"confidence_counts"})

    def __init__(
        self,
        *,
        reference_counts: IntArray,
        false_alarm_rate: float,
        window_size: int,
        seed: int = 0,
        n_boot: int | None = None,
        reference_uncertainty: bool = True,
        score_model: bool = False,
    ) -> None:
        """``reference_counts``: the reference's top-1 confidence histogram, or with
        ``score_model=True`` its anomaly-score histogram."""
        ref = np.asarray(reference_counts, np.int64)
        if ref.ndim != 1 or ref.size < 2 or (ref < 0).any() or ref.sum() <= 0:
            raise ValueError(f"{self.name}: reference counts must be >= 0, >= 2 bins, not all 0")
        p = ref / ref.sum()
        below = np.concatenate([[0.0], np.cumsum(p)[:-1]])
        self._ref = ref
        self._ranks: FloatArray = below + p / 2.0  # mid-rank of each bin
        var = float((p * self._ranks**2).sum() - 0.25)
        if not var > 1e-12:
            raise ValueError(f"{self.name}: the reference fills one bin: nothing to rank")
        self._sd1 = math.sqrt(var)  # of one record's rank
        self._score_model = score_model
        if score_model:
            self.needs = frozenset({"score_counts"})
        self._uncertain = reference_uncertainty
        self._n_boot = n_boot or n_boot_for(false_alarm_rate)
        self._table = NullTable(
            simulate=self._simulate,
            name=self.name,
            seed=seed,
            false_alarm_rate=false_alarm_rate,
            window_size=window_size,
        )
        self._table.null(window_size)  # eager: the usual size is ready
        self.reset()

    def _scores(self, counts: FloatArray) -> FloatArray:
        """The score of each row of ``(B, bins)`` window counts."""
        n = counts.sum(axis=1)
        mean = counts @ self._ranks / np.maximum(n, 1.0)
        z = (mean - 0.5) * np.sqrt(n) / self._sd1
        if not self._score_model:
            z = -z  # a lower confidence: the model is less sure
        log_p = np.minimum(
            special.log_ndtr(-z) - math.log(LESS_SURE),
            special.log_ndtr(z) - math.log(1.0 - LESS_SURE),
        )
        return np.asarray(-np.minimum(log_p, 0.0) / LN10, np.float64)

    def _simulate(self, rng: np.random.Generator, n: int) -> FloatArray:
        boot = null_counts(rng, self._ref, n=n, size=self._n_boot, uncertain=self._uncertain)
        return self._scores(boot.astype(np.float64))

    def update(self, window: Window) -> None:
        self._detected, self._p = False, None
        found = window.score_counts if self._score_model else window.confidence_counts
        if found is None:
            return
        c = np.asarray(found, np.int64).ravel()
        if (c < 0).any():
            raise ValueError(f"{self.name}: negative counts")
        if c.size != self._ref.size:
            raise ValueError(f"{self.name}: {c.size} bins, the reference has {self._ref.size}")
        n = int(c.sum())
        if n == 0:
            return
        self._n = n
        self._score = float(self._scores(c[None, :].astype(np.float64))[0])
        self._detected = self._score > self._table.threshold(n)
        self._p = self._table.p_value(self._score, n)
