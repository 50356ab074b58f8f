"""Degradation: sequential detectors on the accuracy stream from label feedback.

Both watch the error indicator ``x = not correct`` of each labelled prediction, in time
order, and carry their state across windows. A window is flagged when the statistic
crosses the threshold anywhere in it; the detector then restarts after that record.
Thresholds come from simulated Bernoulli streams at the reference error rate (the point
estimate: a sequential test integrates any gap between the evaluated and the true rate, so
drawing the rate from its posterior would mostly calibrate for that gap). With restarts
after each alarm, alarms form a renewal process with run lengths close to exponential; a
window of ``m`` labelled predictions then alarms with probability ``a`` when
``P(alarm within L records of a fresh start) = 1 - (1 - a) ** (L / m)``, so the threshold
is that quantile of the statistic's maximum over ``L = max(4 m, 400)`` fresh records (an
expected run length of about ``m / a`` records).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hub.monitoring.detectors._base import FloatArray, Window
from hub.monitoring.detectors._calibration import NullTable, n_boot_for

DEFAULT_EVALUATION_RECORDS = 200


def reference_error(accuracy: float, accuracy_count: int | None) -> float:
    """The error rate a live stream is tested against.

    The evaluated accuracy is itself an estimate from ``accuracy_count`` test records (200
    assumed when unknown), so the null hypothesis is its Jeffreys 97.5% upper bound on the
    error rate: a perfect-looking evaluation (100% of 278 digits) must not turn the first few
    live errors into an alarm. Real degradations (tens of points) are far above it.

    >>> round(reference_error(1.0, 278), 4)
    0.009
    >>> reference_error(0.9, 10_000) > 0.1
    True
    """
    from scipy.stats import beta

    n = accuracy_count or DEFAULT_EVALUATION_RECORDS
    k = min(max((1.0 - accuracy) * n, 0.0), float(n))
    return float(beta.ppf(0.975, k + 0.5, n - k + 0.5))


__all__ = ["CUSUMDetector", "PageHinkleyDetector"]

BoolArray = npt.NDArray[np.bool_]
State = tuple[float, ...]
_CHUNK_CELLS = 1_000_000  # replicate x record cells per calibration chunk
HORIZON = 4  # windows simulated from a fresh start per calibration replicate
MIN_HORIZON = 400  # records, at least (small windows: past the start-up transient)


class _Sequential:
    name = ""
    needs = frozenset({"correct"})
    _state: State

    def __init__(
        self,
        *,
        accuracy: float,
        false_alarm_rate: float,
        window_size: int,
        seed: int = 0,
        accuracy_count: int | None = None,
        n_boot: int | None = None,
    ) -> None:
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], not {accuracy}")
        floor = 0.5 / (accuracy_count + 1) if accuracy_count else 1e-3
        self.error_rate = min(max(reference_error(accuracy, accuracy_count), floor), 1.0 - floor)
        self._n_boot = n_boot or n_boot_for(false_alarm_rate)
        self._table = NullTable(
            simulate=self._simulate,
            name=self.name,
            seed=seed,
            false_alarm_rate=false_alarm_rate,
            window_size=window_size,
            level=lambda m, rate: (1.0 - rate) ** (self._horizon(m) / m),
        )
        self._table.null(window_size)
        self.reset()

    # subclasses: the statistic path over a batch of streams, from a state
    def _paths(self, x: FloatArray, state: State) -> tuple[FloatArray, tuple[FloatArray, ...]]:
        """Statistic path for each row of ``x`` (B, T) and the running state needed to go
        on (one row per stream, the columns of ``state``)."""
        raise NotImplementedError

    def _initial(self) -> State:
        raise NotImplementedError

    @staticmethod
    def _horizon(m: int) -> int:
        return max(HORIZON * m, MIN_HORIZON)

    def _simulate(self, rng: np.random.Generator, m: int) -> FloatArray:
        horizon = self._horizon(m)
        step = max(1, _CHUNK_CELLS // horizon)  # replicates per chunk: bounded memory
        out = np.empty(self._n_boot, np.float64)
        for first in range(0, self._n_boot, step):
            size = min(step, self._n_boot - first)
            x = (rng.random((size, horizon)) < self.error_rate).astype(np.float64)
            path, _ = self._paths(x, self._initial())
            out[first : first + size] = path.max(axis=1)
        return out

    def update(self, window: Window) -> None:
        self._detected = False
        if window.correct is None:
            return
        c = np.asarray(window.correct).ravel()
        if c.size == 0:
            return
        if c.dtype != np.bool_ and not np.isin(c, (0, 1)).all():
            raise ValueError(f"{self.name}: correct must be booleans")
        x = (~c.astype(bool)).astype(np.float64)[None, :]
        self._m = c.size
        # One threshold for any batching: calibrated for a run length of ``window_size /
        # false_alarm_rate`` records. Keying it by batch size would recalibrate (a costly
        # simulation) for every distinct number of labels an evaluation happens to bring.
        thr = self._table.threshold(self._table.window_size)
        path, states = self._paths(x, self._state)
        above = np.flatnonzero(path[0] > thr)
        if above.size:  # alarm: restart after the crossing record
            t = int(above[0])
            self._score, self._detected = float(path[0, : t + 1].max()), True
            rest = x[:, t + 1 :]
            self._state = self._initial()
            if rest.size:
                _, states = self._paths(rest, self._state)
                self._state = tuple(float(s[0, -1]) for s in states)
            return
        self._score = float(path[0].max())
        self._state = tuple(float(s[0, -1]) for s in states)

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def score(self) -> float:
        return self._score

    @property
    def threshold(self) -> float:
        """Calibrated once, for ``window_size`` records per window (any batching)."""
        return self._table.threshold(self._table.window_size)

    @property
    def p_value(self) -> float | None:
        return None

    def threshold_at(self, false_alarm_rate: float) -> float:
        """For a run of ``window_size / false_alarm_rate`` records (see ``threshold``)."""
        return self._table.threshold_at(false_alarm_rate, self._table.window_size)

    def reset(self) -> None:
        self._detected, self._score = False, 0.0
        self._state = self._initial()
        self._m = self._table.window_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score={self._score:.3g}, drift={self._detected})"


class CUSUMDetector(_Sequential):
    """Bernoulli CUSUM of the error indicator against the reference error rate ``e0``, for
    a rise to ``e1 = max(2 e0, e0 + min_rise)``: ``S_t = max(0, S_t-1 + llr(x_t))``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = CUSUMDetector(accuracy=0.95, false_alarm_rate=0.01, window_size=100)
    >>> det.update(Window(n=100, correct=rng.random(100) < 0.95))
    >>> det.drift_detected
    False
    >>> det.update(Window(n=100, correct=rng.random(100) < 0.6))
    >>> det.drift_detected
    True
    """

    name = "accuracy_cusum"

    def __init__(
        self,
        *,
        accuracy: float,
        false_alarm_rate: float,
        window_size: int,
        seed: int = 0,
        accuracy_count: int | None = None,
        n_boot: int | None = None,
        min_rise: float = 0.05,
    ) -> None:
        e0 = min(max(reference_error(accuracy, accuracy_count), 1e-3), 0.99)
        e1 = min(max(2 * e0, e0 + min_rise), 0.999)
        self._w_err, self._w_ok = math.log(e1 / e0), math.log((1 - e1) / (1 - e0))
        super().__init__(
            accuracy=accuracy,
            false_alarm_rate=false_alarm_rate,
            window_size=window_size,
            seed=seed,
            accuracy_count=accuracy_count,
            n_boot=n_boot,
        )

    def _initial(self) -> State:
        return (0.0,)

    def _paths(self, x: FloatArray, state: State) -> tuple[FloatArray, tuple[FloatArray, ...]]:
        w = np.cumsum(np.where(x > 0, self._w_err, self._w_ok), axis=1)
        # Lindley recursion in closed form: S_t = W_t - min(-S_0, min_{s<=t} W_s)
        s = w - np.minimum(np.minimum.accumulate(w, axis=1), -state[0])
        return np.asarray(s, np.float64), (np.asarray(s, np.float64),)


class PageHinkleyDetector(_Sequential):
    """Page-Hinkley test for a rise of the error indicator above its running mean
    (river's ``PageHinkley``, mode "up", no fading): ``m_T = sum_t (x_t - mean_t - delta)``,
    statistic ``m_T - min_t m_t``. The running mean starts from the reference error rate
    with the weight of ``prior_weight`` records, so the first records after a restart do
    not make it jumpy.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> det = PageHinkleyDetector(accuracy=0.9, false_alarm_rate=0.01, window_size=100)
    >>> det.update(Window(n=100, correct=rng.random(100) < 0.9))
    >>> det.drift_detected
    False
    >>> det.update(Window(n=200, correct=rng.random(200) < 0.5))
    >>> det.drift_detected
    True
    """

    name = "accuracy_page_hinkley"

    def __init__(
        self,
        *,
        accuracy: float,
        false_alarm_rate: float,
        window_size: int,
        seed: int = 0,
        accuracy_count: int | None = None,
        n_boot: int | None = None,
        delta: float | None = None,
        prior_weight: int = 50,
    ) -> None:
        """``delta``: the tolerated rise of the error rate (default half the reference error
        rate, at least 0.025: the statistic then forgets within tens of records)."""
        e0 = reference_error(accuracy, accuracy_count)
        self._delta = delta if delta is not None else max(0.5 * e0, 0.025)
        self._prior = float(prior_weight)
        super().__init__(
            accuracy=accuracy,
            false_alarm_rate=false_alarm_rate,
            window_size=window_size,
            seed=seed,
            accuracy_count=accuracy_count,
            n_boot=n_boot,
        )

    def _initial(self) -> State:
        # (records seen, sum of x, m_T, min m_t)
        return (0.0, 0.0, 0.0, 0.0)

    def _paths(self, x: FloatArray, state: State) -> tuple[FloatArray, tuple[FloatArray, ...]]:
        seen, total, m0, lo = state
        t = seen + np.arange(1, x.shape[1] + 1)
        sums = total + np.cumsum(x, axis=1)
        mean = (sums + self._prior * self.error_rate) / (t + self._prior)
        m = m0 + np.cumsum(x - mean - self._delta, axis=1)
        low = np.minimum(np.minimum.accumulate(m, axis=1), lo)
        n = np.broadcast_to(t, x.shape).astype(np.float64)
        return m - low, (n, sums, m, low)
