"""Calibration helpers shared by the detectors: size buckets, seeded generators, the
reference's sampling distribution, thresholds and bootstrap p-values (numpy only)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import special

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GRID = 1.1  # windows within ~5% of a calibrated size share its threshold
MIN_BOOT, MAX_BOOT = 1000, 20_000


def n_boot_for(false_alarm_rate: float) -> int:
    """Bootstrap replicates: about 30 null exceedances at the target rate."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), not {false_alarm_rate}")
    return int(min(MAX_BOOT, max(MIN_BOOT, math.ceil(30 / false_alarm_rate))))


def size_key(n: int, window_size: int) -> int:
    """The calibrated size a window of ``n`` uses: ``window_size`` times a power of
    ``GRID`` (``n`` itself for small windows, where a few records change the null a lot)."""
    if n <= 20:
        return max(1, n)
    steps = round(math.log(n / window_size) / math.log(GRID))
    return max(1, round(window_size * GRID**steps))


def rng_for(seed: int, name: str, size: int) -> np.random.Generator:
    """A generator fixed by (seed, detector name, calibrated size): calibrating in any order
    gives the same thresholds."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), size])


def null_counts(
    rng: np.random.Generator, counts: IntArray, *, n: int, size: int, uncertain: bool
) -> IntArray:
    """``size`` windows of ``n`` records drawn like the reference ``counts``: multinomial on
    its proportions, or (``uncertain``) on proportions drawn from their posterior
    Dirichlet(counts + 1/2): the reference is itself a finite sample, and live data is a
    fresh draw from the population, not from the reference."""
    c = np.asarray(counts, np.float64)
    if uncertain:
        p = rng.dirichlet(c + 0.5, size=size)
    else:
        p = np.broadcast_to(c / c.sum(), (size, len(c)))
    # multinomial as a chain of binomials, vectorised over the replicates
    out = np.zeros((size, len(c)), np.int64)
    left = np.full(size, n, np.int64)
    mass = np.ones(size)
    for k in range(len(c) - 1):
        q = np.clip(p[:, k] / np.maximum(mass, 1e-300), 0.0, 1.0)
        out[:, k] = rng.binomial(left, q)
        left -= out[:, k]
        mass = mass - p[:, k]
    out[:, -1] = left
    return out


def chi2_logsf(x: FloatArray, df: int) -> FloatArray:
    """Natural log of the chi-square survival function, Wilson-Hilferty approximation
    (fast, finite far into the tail; only a monotone scale: thresholds are bootstrapped)."""
    v = 2.0 / (9.0 * df)
    z = (np.cbrt(np.maximum(x, 0.0) / df) - (1.0 - v)) / math.sqrt(v)
    return np.asarray(special.log_ndtr(-z), np.float64)


class NullTable:
    """Sorted null statistics per calibrated size, computed on first use and cached."""

    def __init__(
        self,
        *,
        simulate: Callable[[np.random.Generator, int], FloatArray],
        name: str,
        seed: int,
        false_alarm_rate: float,
        window_size: int,
        level: Callable[[int], float] | None = None,
    ) -> None:
        """``level(size)``: the null quantile taken as threshold (default
        ``1 - false_alarm_rate``)."""
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, not {window_size}")
        self.false_alarm_rate, self.window_size = false_alarm_rate, window_size
        self._level = level or (lambda _: 1.0 - false_alarm_rate)
        self._simulate, self._name, self._seed = simulate, name, seed
        self._null: dict[int, FloatArray] = {}
        self._thresholds: dict[int, float] = {}

    def key(self, n: int) -> int:
        return size_key(n, self.window_size)

    def null(self, n: int) -> FloatArray:
        k = self.key(n)
        if k not in self._null:
            stats = np.asarray(self._simulate(rng_for(self._seed, self._name, k), k), np.float64)
            self._null[k] = np.sort(stats)
            # the smallest null value exceeded by at most a fraction 1 - level of the null
            q = np.quantile(self._null[k], self._level(k), method="higher")
            self._thresholds[k] = float(q)
        return self._null[k]

    def threshold(self, n: int) -> float:
        self.null(n)
        return self._thresholds[self.key(n)]

    def p_value(self, score: float, n: int) -> float:
        """Bootstrap p-value: (1 + #null >= score) / (B + 1)."""
        null = self.null(n)
        above = len(null) - int(np.searchsorted(null, score, side="left"))
        return (1 + above) / (len(null) + 1)


def bayesian_bootstrap_counts(
    rng: np.random.Generator, rows: int, *, n: int, size: int
) -> FloatArray:
    """``(size, rows)`` multiplicities of reference rows in ``size`` windows of ``n``: each
    window draws its rows from Dirichlet(1, ..., 1) weights over the reference rows (the
    Bayesian bootstrap: the population the reference is one sample of), so the windows
    carry the reference's own sampling noise and keep the features' dependence."""
    w = rng.standard_exponential((size, rows))
    cum = np.cumsum(w, axis=1)
    cum /= cum[:, -1:]
    cum[:, -1] = 1.0
    offset = np.arange(size, dtype=np.float64)[:, None]
    u = rng.random((size, n))
    pos = np.searchsorted((cum + offset).ravel(), (u + offset).ravel(), side="right")
    pos = np.minimum(pos, size * rows - 1)
    return np.bincount(pos, minlength=size * rows).reshape(size, rows).astype(np.float64)
