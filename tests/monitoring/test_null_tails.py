"""Thresholds far below the bootstrap's resolution: the exponential tail a ``NullTable``
fits to its top 2.5%, against nulls whose tails are known exactly (all in the Gumbel
domain, like every detector's statistic; a heavy, Pareto-like tail would be under-estimated,
see ``Tail``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hub.monitoring.detectors._calibration import NullTable, Tail

REPLICATES = 20_000
NULLS = {  # name -> (sampler, exact survival function)
    "exponential": (lambda rng, size: rng.exponential(size=size), stats.expon.sf),
    "chi2 df=9": (lambda rng, size: rng.chisquare(9, size=size), stats.chi2(9).sf),
    # -log10 of a chi-square p-value: the feature test's score scale
    "-log10 p": (
        lambda rng, size: -stats.chi2(9).logsf(rng.chisquare(9, size=size)) / np.log(10),
        lambda s: 10.0 ** (-np.asarray(s)),
    ),
    "gamma k=0.5 (lighter start)": (
        lambda rng, size: rng.gamma(0.5, size=size),
        stats.gamma(0.5).sf,
    ),
}


def _table(name: str, seed: int) -> NullTable:
    sampler = NULLS[name][0]
    return NullTable(
        simulate=lambda rng, _k: sampler(rng, REPLICATES),
        name=name,
        seed=seed,
        false_alarm_rate=0.01,
        window_size=100,
    )


@pytest.mark.parametrize("name", sorted(NULLS))
@pytest.mark.parametrize("rate", [1e-5, 1e-7])
def test_extrapolated_thresholds_keep_the_rate_within_a_small_factor(
    name: str, rate: float
) -> None:
    """Over several bootstrap draws the true tail mass beyond the threshold is never more
    than 5x the rate (measured worst case: a single chi-square term, gamma shape 0.5, 4x at
    1e-7) and on the geometric mean within [rate / 30, 3 rate] (a fit may be conservative:
    a chi-square's falling mean excess, up to ~12x at 1e-7, costs power, not budget)."""
    sf = NULLS[name][1]
    actual = []
    for seed in range(6):
        table = _table(name, seed)
        threshold = table.threshold_at(rate, 100)
        actual.append(float(sf(threshold)))
        # the p-value at the threshold is the rate (the two are one fit)
        assert table.p_value(threshold, 100) == pytest.approx(rate, rel=1e-6)
    assert max(actual) <= 5 * rate, actual
    mean = float(np.exp(np.mean(np.log(actual))))
    assert rate / 30 <= mean <= 3 * rate, actual


def test_where_the_bootstrap_has_data_thresholds_are_its_own_quantiles() -> None:
    table = _table("exponential", 0)
    null = table.null(100)
    assert table.threshold_at(0.01, 100) == float(np.quantile(null, 0.99, method="higher"))
    assert table.p_value(float(np.median(null)), 100) == pytest.approx(0.5, abs=0.01)


def test_a_null_without_spread_at_the_top_has_no_tail() -> None:
    null = np.sort(np.r_[np.zeros(19_000), np.ones(1_000)])
    assert Tail.fit(null) is None
