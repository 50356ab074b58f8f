"""Calibration helpers shared by the detectors: size buckets, seeded generators, the
reference's sampling distribution, thresholds and bootstrap p-values (numpy only)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

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
    rng: np.random.Generator,
    counts: IntArray,
    *,
    n: int,
    size: int,
    uncertain: bool,
    prior: float = 0.5,
) -> IntArray:
    """``size`` windows of ``n`` records drawn like the reference ``counts``: multinomial on
    its proportions, or (``uncertain``) on proportions drawn from their posterior
    Dirichlet(counts + ``prior``): the reference is itself a finite sample, and live data is
    a fresh draw from the population, not from the reference."""
    c = np.asarray(counts, np.float64)
    if uncertain:
        p = rng.dirichlet(c + prior, size=size)
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


TAIL = 0.025  # the top fraction of a null (at least MIN_TAIL values) its tail is fitted to
MIN_TAIL = 30


@dataclass(frozen=True)
class Tail:
    """An exponential tail fitted to the null's exceedances over ``u`` (a fraction ``mass``
    of the null lies above it): ``P(S > s) = mass * exp(-(s - u) / scale)``, ``scale`` the
    mean excess (its maximum-likelihood estimate).

    Exponential, not a generalized Pareto with a fitted shape: every statistic here is in
    the Gumbel domain (-log10 of a chi-square p-value is exactly exponential, MMD² a
    weighted sum of chi-squares, a CUSUM maximum Gumbel), and a shape fitted from a few
    hundred exceedances is noise that moves a 1e-7 threshold by orders of magnitude. The
    scale is the larger of the mean excesses over the top 2.5% and the top 0.5%, so a tail
    whose mean excess still grows (a gamma with shape < 1) is not under-estimated; one
    whose mean excess falls (shape > 1) makes the fit conservative.
    A heavy-tailed (Pareto) null would be under-estimated: a new detector with one must
    not rely on rates below its bootstrap's resolution (tests/monitoring/test_null_tails).
    """

    u: float
    mass: float
    scale: float

    @classmethod
    def fit(cls, null: FloatArray) -> Tail | None:
        """None when the top of the null has no spread (a discrete statistic)."""
        m = len(null)
        k = max(MIN_TAIL, int(TAIL * m))
        if m < 2 * k:
            return None
        u = float(null[m - k - 1])
        scale = float((np.asarray(null[m - k :], np.float64) - u).mean())
        # the mean excess further out: a tail that grows heavier with the threshold (a
        # gamma with shape < 1, like MMD²'s leading chi-square term) gets its larger scale
        far = max(MIN_TAIL, k // 5)
        scale = max(
            scale, float((np.asarray(null[m - far :], np.float64) - null[m - far - 1]).mean())
        )
        if not scale > 0:
            return None
        return cls(u=u, mass=k / m, scale=scale)

    def sf(self, score: float) -> float:
        """P(S > score) for ``score > u``."""
        return self.mass * math.exp(-max(score - self.u, 0.0) / self.scale)

    def isf(self, rate: float) -> float:
        """The score exceeded with probability ``rate`` (``rate < mass``)."""
        return self.u - self.scale * math.log(rate / self.mass)


class NullTable:
    """Sorted null statistics per calibrated size, computed on first use and cached.

    Thresholds and p-values come from the bootstrap where it has data (``MIN_TAIL``
    replicates beyond), and further out from an exponential fit to its top 2.5%
    (:class:`Tail`), so a
    rate far below ``1 / replicates`` (a fleet's error budget spread over thousands of
    scopes) still gets a threshold, and a p-value can be that small.
    """

    def __init__(
        self,
        *,
        simulate: Callable[[np.random.Generator, int], FloatArray],
        name: str,
        seed: int,
        false_alarm_rate: float,
        window_size: int,
        level: Callable[[int, float], float] | None = None,
    ) -> None:
        """``level(size, rate)``: the null quantile that is the threshold for a false-alarm
        ``rate`` (default ``1 - rate``)."""
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, not {window_size}")
        self.false_alarm_rate, self.window_size = false_alarm_rate, window_size
        self._level = level or (lambda _, rate: 1.0 - rate)
        self._simulate, self._name, self._seed = simulate, name, seed
        self._null: dict[int, FloatArray] = {}
        self._thresholds: dict[int, float] = {}
        self._tails: dict[int, Tail | None] = {}

    def key(self, n: int) -> int:
        return size_key(n, self.window_size)

    def null(self, n: int) -> FloatArray:
        k = self.key(n)
        if k not in self._null:
            stats = np.asarray(self._simulate(rng_for(self._seed, self._name, k), k), np.float64)
            self._null[k] = np.sort(stats)
            self._tails[k] = Tail.fit(self._null[k])
            self._thresholds[k] = self._quantile(k, self.false_alarm_rate)
        return self._null[k]

    def _quantile(self, k: int, rate: float) -> float:
        null, tail = self._null[k], self._tails[k]
        beyond = 1.0 - self._level(k, rate)  # the null's share above the threshold
        if tail is not None and beyond * len(null) < MIN_TAIL:  # too few replicates up there
            return tail.isf(beyond)
        # the smallest null value exceeded by at most a fraction ``beyond`` of the null
        return float(np.quantile(null, 1.0 - beyond, method="higher"))

    def threshold(self, n: int) -> float:
        self.null(n)
        return self._thresholds[self.key(n)]

    def threshold_at(self, rate: float, n: int) -> float:
        """The threshold for false-alarm ``rate`` instead of the table's own."""
        if not 0.0 < rate < 1.0:
            raise ValueError(f"false_alarm_rate must be in (0, 1), not {rate}")
        self.null(n)
        return self._quantile(self.key(n), rate)

    def p_value(self, score: float, n: int) -> float:
        """Bootstrap p-value ``(1 + #null >= score) / (B + 1)``; where fewer than
        ``MIN_TAIL`` replicates reach the score, the fitted tail's (it can go below
        ``1 / (B + 1)``)."""
        null = self.null(n)
        tail = self._tails[self.key(n)]
        above = len(null) - int(np.searchsorted(null, score, side="left"))
        if tail is not None and above < MIN_TAIL:
            return tail.sf(score)
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


class TableVerdict:
    """The reporting half of a detector tested against one :class:`NullTable` at the last
    window's size ``_n``: score, verdict, p-value, thresholds and reset (shared by the
    histogram tests and the output rank test; their ``update`` sets the fields)."""

    _table: NullTable
    _n: int
    _score: float
    _detected: bool
    _p: float | None

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def score(self) -> float:
        return self._score

    @property
    def threshold(self) -> float:
        """Calibrated for the last window's size (``window_size`` before any)."""
        return self._table.threshold(self._n)

    @property
    def p_value(self) -> float | None:
        return self._p

    def threshold_at(self, false_alarm_rate: float) -> float:
        return self._table.threshold_at(false_alarm_rate, self._n)

    def reset(self) -> None:
        self._detected, self._score, self._p = False, 0.0, None
        self._n = self._table.window_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score={self._score:.3g}, drift={self._detected})"
