"""Two-sample tests on binned sketches: per-feature G-tests and prediction (black-box
shift) drift on class counts + confidence histogram, each calibrated by a bootstrap of the
reference counts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special

from hub.monitoring.detectors._base import FloatArray, IntArray, Window
from hub.monitoring.detectors._calibration import (
    NullTable,
    TableVerdict,
    bayesian_bootstrap_counts,
    chi2_logsf,
    n_boot_for,
    null_counts,
)

__all__ = ["FeatureChi2", "PredictionChi2"]

LN10 = math.log(10.0)


def _chi2_logsf(x: FloatArray, df: FloatArray) -> FloatArray:
    """``chi2_logsf`` with a degrees-of-freedom array (one histogram each)."""
    v = 2.0 / (9.0 * df)
    z = (np.cbrt(np.maximum(x, 0.0) / df) - (1.0 - v)) / np.sqrt(v)
    return np.asarray(special.log_ndtr(-z), np.float64)


class _CountsTest(TableVerdict):
    """Shared core: a family of histograms (the reference's counts) against a window's.

    Per histogram the G statistic (likelihood-ratio chi-square) of the window's counts
    against the reference proportions (add-1/2 smoothed, so a bin the reference never
    filled is surprising but finite), turned into an asymptotic log p-value. The family's
    statistic is the smaller of the Bonferroni min-p (sparse shifts: a few histograms move)
    and the p-value of the summed G (diffuse shifts: every histogram moves a little);
    ``score = -log10`` of it. The asymptotic p-values are only a scale: the threshold is the
    ``1 - false_alarm_rate`` quantile of the score on windows bootstrapped from the
    reference at the window's size.
    """

    name = ""
    needs: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        reference_counts: Sequence[IntArray],
        false_alarm_rate: float,
        window_size: int,
        seed: int = 0,
        n_boot: int | None = None,
        reference_uncertainty: bool = True,
        reference_rows: FloatArray | None = None,
        edges: Sequence[FloatArray] | None = None,
        joint: IntArray | None = None,
    ) -> None:
        """``joint``: the two histograms' joint counts on the reference rows (``(K_0,
        K_1)``; their marginals become the reference counts): the null resamples rows of the
        table, keeping the histograms' dependence, and the summed G is tested too."""
        if not reference_counts:
            raise ValueError(f"{self.name}: no reference histograms")
        self._ref = [np.asarray(c, np.int64) for c in reference_counts]
        self._onehot: FloatArray | None = None
        self._joint: IntArray | None = None
        if reference_rows is not None and edges is not None:
            self._ref, self._onehot = self._bin_rows(reference_rows, edges)
        elif joint is not None:
            self._joint = np.asarray(joint, np.int64)
            if len(self._ref) != 2 or self._joint.ndim != 2 or (self._joint < 0).any():
                raise ValueError(f"{self.name}: a joint table needs two histograms, >= 0")
            self._ref = [self._joint.sum(axis=1), self._joint.sum(axis=0)]
        if any(c.ndim != 1 or c.size < 1 or (c < 0).any() or c.sum() <= 0 for c in self._ref):
            raise ValueError(f"{self.name}: reference counts must be non-negative, non-empty")
        self._logp = [np.log((c + 0.5) / (c.sum() + 0.5 * c.size)) for c in self._ref]
        self._floor = [math.log(0.5 / (c.sum() + 0.5 * c.size)) for c in self._ref]
        self._live = [i for i, c in enumerate(self._ref) if c.size > 1]  # 1 bin: no test
        # one window's statistic in one pass over all live histograms (the update path)
        self._flat_logp = np.concatenate([self._logp[j] for j in self._live] or [np.zeros(0)])
        sizes = [self._ref[j].size for j in self._live]
        self._starts = np.cumsum([0, *sizes[:-1]]).astype(np.intp)
        self._dfs = np.asarray(sizes, np.float64) - 1.0
        # the summed G assumes the null keeps the histograms' dependence: only with rows
        # (or their joint table)
        self._use_sum = self._onehot is not None or self._joint is not None
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

    # -------------------------------------------------------------- the statistic
    def _log_p(self, counts: Sequence[IntArray]) -> FloatArray:
        """Combined natural-log p-value per row of the ``(B, K_j)`` count arrays."""
        g_sum = np.zeros(len(counts[0]), np.float64)
        min_lp = np.zeros(len(counts[0]), np.float64)
        df_sum = 0
        for j in self._live:
            c = np.asarray(counts[j], np.float64)
            logp = self._logp[j]
            if c.shape[1] > logp.size:  # bins the reference never had (e.g. a new class)
                logp = np.pad(logp, (0, c.shape[1] - logp.size), constant_values=self._floor[j])
            n = c.sum(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                terms = np.where(c > 0, c * (np.log(c) - np.log(n) - logp[: c.shape[1]]), 0.0)
            g = np.maximum(2.0 * terms.sum(axis=1), 0.0)
            df = self._ref[j].size - 1
            g_sum += g
            df_sum += df
            min_lp = np.minimum(min_lp, chi2_logsf(g, df))
        if df_sum == 0:
            return np.zeros(len(counts[0]), np.float64)
        combined = min_lp + math.log(len(self._live))  # Bonferroni
        if self._use_sum:
            combined = np.minimum(combined, chi2_logsf(g_sum, df_sum))
        return np.minimum(combined, 0.0)

    def _log_p_one(self, rows: Sequence[IntArray]) -> float | None:
        """``_log_p`` of one window (``(1, K_j)`` rows) without a loop over the histograms;
        None when a histogram is wider than the reference's (the loop pads those)."""
        if not self._live:
            return 0.0
        if any(rows[j].shape[1] != self._ref[j].size for j in self._live):
            return None
        c = np.concatenate([rows[j][0] for j in self._live]).astype(np.float64)
        n = np.add.reduceat(c, self._starts)
        n_rep = np.repeat(n, self._dfs.astype(np.intp) + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(c > 0, c * (np.log(c) - np.log(n_rep) - self._flat_logp), 0.0)
        g = np.maximum(2.0 * np.add.reduceat(terms, self._starts), 0.0)
        combined = float(_chi2_logsf(g, self._dfs).min()) + math.log(len(self._live))
        if self._use_sum:
            total = _chi2_logsf(np.asarray([g.sum()]), np.asarray([self._dfs.sum()]))
            combined = min(combined, float(total[0]))
        return min(combined, 0.0)

    def _bin_rows(
        self, rows: FloatArray, edges: Sequence[FloatArray]
    ) -> tuple[list[IntArray], FloatArray]:
        """Reference counts from raw rows (binned like the agent) and the rows' one-hot bin
        matrix ``(rows, sum of bins)`` the bootstrap multiplies by row multiplicities."""
        x = np.asarray(rows, np.float64)
        x = x.reshape(len(x), -1)
        if x.shape[1] != len(edges):
            raise ValueError(f"{self.name}: rows have {x.shape[1]} values, {len(edges)} edges")
        x = x[np.isfinite(x).all(axis=1)]
        blocks, counts = [], []
        for j, e in enumerate(edges):
            bins = np.searchsorted(np.asarray(e, np.float64), x[:, j], side="right")
            block = np.zeros((len(x), len(e) + 1))
            block[np.arange(len(x)), bins] = 1.0
            blocks.append(block)
            counts.append(block.sum(axis=0).astype(np.int64))
        return counts, np.hstack(blocks)

    def _simulate(self, rng: np.random.Generator, n: int) -> FloatArray:
        if self._joint is not None:  # rows of the joint table: the margins stay dependent
            # the Dirichlet's 1/2 per bin of each margin spread over the table's cells (1/2
            # per cell would put K/2 on an empty confidence bin: a needlessly wide null)
            cells = null_counts(
                rng,
                self._joint.ravel(),
                n=n,
                size=self._n_boot,
                uncertain=self._uncertain,
                prior=0.5 / max(self._joint.shape),
            ).reshape(self._n_boot, *self._joint.shape)
            return -self._log_p([cells.sum(axis=2), cells.sum(axis=1)]) / LN10
        if self._onehot is None:  # histograms resampled independently from their counts
            boot = [
                null_counts(rng, c, n=n, size=self._n_boot, uncertain=self._uncertain)
                for c in self._ref
            ]
            return -self._log_p(boot) / LN10
        out = np.empty(self._n_boot)
        rows = len(self._onehot)
        step = max(1, 2_000_000 // max(rows, n))
        splits = np.cumsum([c.size for c in self._ref])[:-1]
        for first in range(0, self._n_boot, step):
            size = min(step, self._n_boot - first)
            if self._uncertain:
                m = bayesian_bootstrap_counts(rng, rows, n=n, size=size)
            else:
                idx = rng.integers(0, rows, size=(size, n)) + rows * np.arange(size)[:, None]
                hits = np.bincount(idx.ravel(), minlength=size * rows)
                m = hits.reshape(size, rows).astype(np.float64)
            counts = np.split((m @ self._onehot).round().astype(np.int64), splits, axis=1)
            out[first : first + size] = -self._log_p(counts) / LN10
        return out

    # -------------------------------------------------------------- the protocol
    def _counts(self, window: Window) -> list[IntArray] | None:
        raise NotImplementedError

    def update(self, window: Window) -> None:
        self._detected, self._p = False, None
        counts = self._counts(window)
        if counts is None:
            return
        if len(counts) != len(self._ref):
            raise ValueError(
                f"{self.name}: {len(counts)} histograms, reference has {len(self._ref)}"
            )
        rows = []
        for c, ref in zip(counts, self._ref, strict=True):
            a = np.asarray(c, np.int64).ravel()
            if (a < 0).any():
                raise ValueError(f"{self.name}: negative counts")
            if a.size < ref.size:
                a = np.pad(a, (0, ref.size - a.size))
            rows.append(a[None, :])
        n = max(int(r.sum()) for r in rows)
        if n == 0:
            return
        self._n = n
        fast = self._log_p_one(rows)
        self._score = float(-(self._log_p(rows)[0] if fast is None else fast) / LN10)
        self._detected = self._score > self._table.threshold(n)
        self._p = self._table.p_value(self._score, n)


class FeatureChi2(_CountsTest):
    """Per-input-feature G-tests on the agent's sketches, combined over features.

    With raw reference rows (``reference_samples`` + the profile's ``feature_edges``) the
    reference counts are the rows binned like the agent bins, and the null resamples whole
    rows (Bayesian bootstrap), which keeps the features' dependence; the statistic is then
    min(Bonferroni min-p, summed-G p). From counts alone each feature is resampled on its
    own and the statistic is the Bonferroni min-p (valid whatever the dependence).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = [np.array([50, 50, 50, 50])] * 3
    >>> det = FeatureChi2(reference_counts=ref, false_alarm_rate=0.01, window_size=100)
    >>> det.drift_detected, det.p_value
    (False, None)
    >>> det.update(Window(n=100, feature_counts=[rng.multinomial(100, [0.25] * 4)] * 3))
    >>> det.drift_detected
    False
    >>> det.update(Window(n=100, feature_counts=[np.array([70, 10, 10, 10])] * 3))
    >>> det.drift_detected, det.score > det.threshold
    (True, True)
    """

    name = "feature_chi2"
    needs = frozenset({"feature_counts"})

    def _counts(self, window: Window) -> list[IntArray] | None:
        return window.feature_counts


class PredictionChi2(_CountsTest):
    """Black-box shift detection on the model's outputs (Rabanser et al. 2019, BBSD with
    hard labels): G-tests on the predicted-class counts and the top-1 confidence histogram
    (classifiers), or on the anomaly-score histogram (score models).

    With the profile's joint table of the model's outputs on the reference rows
    (``joint``: per predicted class, its confidence histogram) the null resamples reference
    rows, keeping how class and confidence go together, and the statistic is min(Bonferroni
    min-p, summed-G p) as for features with rows; from the two margins alone (older
    profiles) each is resampled on its own and only the Bonferroni min-p (valid whatever
    the dependence) is tested.

    >>> import numpy as np
    >>> det = PredictionChi2(
    ...     reference_counts=[np.array([100, 100, 100]), np.array([10, 30, 160])],
    ...     false_alarm_rate=0.01, window_size=60)
    >>> det.update(Window(n=60, class_counts=np.array([20, 21, 19]),
    ...                   confidence_counts=np.array([3, 9, 48])))
    >>> det.drift_detected
    False
    >>> det.update(Window(n=60, class_counts=np.array([50, 5, 5]),
    ...                   confidence_counts=np.array([30, 20, 10])))
    >>> det.drift_detected
    True
    """

    name = "prediction_chi2"
    needs = frozenset({"class_counts", "confidence_counts"})

    def __init__(
        self,
        *,
        reference_counts: Sequence[IntArray],
        false_alarm_rate: float,
        window_size: int,
        seed: int = 0,
        n_boot: int | None = None,
        reference_uncertainty: bool = True,
        score_model: bool = False,
        joint: IntArray | None = None,
    ) -> None:
        """``reference_counts``: ``[class_counts, confidence_counts]`` (or just the class
        counts), or ``[score_counts]`` with ``score_model=True``; ``joint``: the
        ``(classes, confidence bins)`` table of the reference rows (its margins replace
        ``reference_counts``)."""
        self._score_model = score_model
        if score_model:
            self.needs = frozenset({"score_counts"})
        elif len(reference_counts) == 1:
            self.needs = frozenset({"class_counts"})
        super().__init__(
            reference_counts=reference_counts,
            false_alarm_rate=false_alarm_rate,
            window_size=window_size,
            seed=seed,
            n_boot=n_boot,
            reference_uncertainty=reference_uncertainty,
            joint=joint,
        )

    def _counts(self, window: Window) -> list[IntArray] | None:
        if self._score_model:
            return None if window.score_counts is None else [window.score_counts]
        if window.class_counts is None:
            return None
        if len(self._ref) == 1:
            return [window.class_counts]
        if window.confidence_counts is None:
            return None
        return [window.class_counts, window.confidence_counts]
