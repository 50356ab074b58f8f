"""Multivariate drift: kernel maximum mean discrepancy between a window's reservoir of raw
inputs and reference inputs, with a Bayesian-bootstrap null from the reference rows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hub.monitoring.detectors._base import FloatArray, Window
from hub.monitoring.detectors._calibration import (
    NullTable,
    bayesian_bootstrap_counts,
    n_boot_for,
)

__all__ = ["MIN_SAMPLES", "MMDDetector"]

_CHUNK_CELLS = 2_000_000  # multiplicity-matrix entries per calibration chunk


def _sq_dists(a: FloatArray, b: FloatArray) -> FloatArray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.asarray(np.maximum(d, 0.0))


MIN_SAMPLES = 20


class MMDDetector:
    """Unbiased MMD² (Gaussian kernel, median-heuristic bandwidth on standardised inputs)
    between a window's reservoir and the reference rows.

    The null at a window size ``k``: windows of ``k`` reference rows drawn with Bayesian
    bootstrap weights (the reference is one sample of the population; its own noise is
    part of the null), each row compared with the *other* reference rows and pairs of the
    same row left out, so a null window looks like fresh data to the statistic. The
    kernel matrix is computed once; a replicate costs one product with its multiplicities.
    ``score`` is MMD²; windows larger than ``max_window`` are subsampled (seeded).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = MMDDetector(reference_samples=rng.normal(size=(400, 3)),
    ...                   false_alarm_rate=0.01, window_size=50)
    >>> det.update(Window(n=50, samples=rng.normal(size=(50, 3))))
    >>> det.drift_detected
    False
    >>> det.update(Window(n=50, samples=rng.normal(loc=1.0, size=(50, 3))))
    >>> det.drift_detected, det.p_value < 0.01
    (True, True)
    """

    name = "mmd"
    needs = frozenset({"samples"})

    def __init__(
        self,
        *,
        reference_samples: npt.ArrayLike,
        false_alarm_rate: float,
        window_size: int,
        seed: int = 0,
        n_boot: int | None = None,
        max_reference: int = 500,
        max_window: int = 200,
    ) -> None:
        x = np.asarray(reference_samples, np.float64)
        x = x.reshape(len(x), -1)
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) < 20:
            raise ValueError(f"mmd needs >= 20 finite reference rows, got {len(x)}")
        rng = np.random.default_rng([seed, 0x6D6D64])
        x = x[rng.permutation(len(x))[:max_reference]]
        self._mean = x.mean(axis=0)
        std = x.std(axis=0)
        self._std = np.where(std > 0, std, 1.0)
        self._ref = (x - self._mean) / self._std
        n = len(self._ref)
        d = _sq_dists(self._ref, self._ref)
        off = ~np.eye(n, dtype=bool)
        median = float(np.median(d[off]))
        self._gamma = 1.0 / (median if median > 0 else 1.0)
        k = np.exp(-self._gamma * d)
        np.fill_diagonal(k, 0.0)
        self._kernel = k
        self._kxx = float(k.sum() / (n * (n - 1)))
        self._others = k.sum(axis=1) / (n - 1)  # mean kernel of each row with the others
        self._dims = x.shape[1]
        self._max_window = max_window
        self._seed = seed
        self._n_boot = n_boot or n_boot_for(false_alarm_rate)
        self._table = NullTable(
            simulate=self._simulate,
            name=self.name,
            seed=seed,
            false_alarm_rate=false_alarm_rate,
            window_size=min(window_size, max_window),
        )
        self._table.null(min(window_size, max_window))
        self.reset()

    def _simulate(self, rng: np.random.Generator, k: int) -> FloatArray:
        if k < 2:
            return np.zeros(self._n_boot)
        rows = len(self._others)
        out = np.empty(self._n_boot, np.float64)
        step = max(1, _CHUNK_CELLS // max(rows, k))
        for first in range(0, self._n_boot, step):
            size = min(step, self._n_boot - first)
            m = bayesian_bootstrap_counts(rng, rows, n=k, size=size)
            # the kernel's zero diagonal leaves pairs of the same row out of m' K m
            kyy_sum = ((m @ self._kernel) * m).sum(axis=1)
            pairs = k * (k - 1) - ((m * m).sum(axis=1) - k)
            kyy = kyy_sum / np.maximum(pairs, 1.0)
            kxy = (m @ self._others) / k
            out[first : first + size] = kyy + self._kxx - 2.0 * kxy
        return out

    def _statistic(self, z: FloatArray) -> float:
        k = len(z)
        k_yy = np.exp(-self._gamma * _sq_dists(z, z))
        kyy = (k_yy.sum() - np.trace(k_yy)) / (k * (k - 1))
        kxy = np.exp(-self._gamma * _sq_dists(z, self._ref)).mean()
        return float(kyy + self._kxx - 2.0 * kxy)

    def update(self, window: Window) -> None:
        self._detected, self._p = False, None
        if window.samples is None:
            return
        y = np.asarray(window.samples, np.float64)
        y = y.reshape(len(y), -1) if y.ndim != 2 else y
        if y.shape[1] != self._dims:
            raise ValueError(f"mmd: samples have {y.shape[1]} values, reference {self._dims}")
        y = y[np.isfinite(y).all(axis=1)]
        if len(y) > self._max_window:
            rng = np.random.default_rng([self._seed, len(y)])
            y = y[rng.choice(len(y), self._max_window, replace=False)]
        if len(y) < MIN_SAMPLES:  # too few for a verdict; each small size costs a calibration
            return
        self._k = len(y)
        self._score = self._statistic((y - self._mean) / self._std)
        self._detected = self._score > self._table.threshold(self._k)
        self._p = self._table.p_value(self._score, self._k)

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def score(self) -> float:
        return self._score

    @property
    def threshold(self) -> float:
        """Calibrated for the last window's sample count (``window_size`` before any)."""
        return self._table.threshold(self._k)

    @property
    def p_value(self) -> float | None:
        return self._p

    def threshold_at(self, false_alarm_rate: float) -> float:
        return self._table.threshold_at(false_alarm_rate, self._k)

    def reset(self) -> None:
        self._detected, self._score, self._p = False, 0.0, None
        self._k = self._table.window_size

    def __repr__(self) -> str:
        return f"MMDDetector(score={self._score:.3g}, drift={self._detected})"
