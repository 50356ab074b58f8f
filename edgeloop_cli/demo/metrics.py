"""The loop's figures, each computed exactly as docs/LOOP_METRICS.md defines it.

Pure functions over a timeline the demo (and ``bench/loop.py``) read back from the hub's
database: labelled predictions, alerts, telemetry windows. Times are seconds on one clock (the
demo's timeline); nothing here touches a database, so each definition is unit-tested on a
hand-built timeline (tests/demo/test_metrics.py).

Scoring rule: a labelled prediction counts only when the record its input was drawn from (its
*source*) is in no training split of any model version of the run, so no model is ever scored
on a source it was trained on. Predictions without a known source are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COHORTS",
    "AlertRow",
    "CohortAccuracy",
    "Detection",
    "LabelRow",
    "WindowRow",
    "clustered_wilson",
    "cohort_accuracy",
    "detection",
    "effective_n",
    "false_alarms",
    "recovered_after",
    "scope_devices",
    "scoreable",
    "wilson",
]

COHORTS = ("drifted", "clean", "fleet")
Z95 = 1.959963984540054


@dataclass(frozen=True, kw_only=True)
class LabelRow:
    """One labelled prediction: when its label came, from which device, which model version
    served it, whether the prediction was right, and the source record of its input."""

    t: float
    device: str
    version: str
    correct: bool
    source: str | None


@dataclass(frozen=True, kw_only=True)
class AlertRow:
    id: int
    t: float  # when the alert was opened
    kind: str
    scope: str  # device:<id> | group:<name> | version:<model>@<version>
    detector: str = ""
    version: str = ""


@dataclass(frozen=True, kw_only=True)
class WindowRow:
    """One telemetry window as the hub stored it: device, its end, when it was received."""

    device: str
    end: float
    received: float


def wilson(correct: float, n: float) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion, in percent; None for n = 0 (``n`` may be an
    effective sample size, ``correct`` the matching share of it)."""
    if n <= 0:
        return None
    p = correct / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2)


def effective_n(per_source: Sequence[tuple[int, int]]) -> float:
    """The effective sample size of an accuracy over reads clustered by source record.

    ``per_source``: (correct, reads) of each source. A deterministic model reading one source
    several times (several devices, a deterministic drift) gives the same answer each time, so
    the reads are not independent draws: ``n_eff = p(1 - p) / v`` with ``v`` the cluster-robust
    (ratio-estimator) variance ``sum_s (c_s - p m_s)^2 / n^2``. One read per source gives
    ``n``; identical reads of each source give the number of sources, which is also what
    ``p`` in {0, 1} (no variance to measure) falls back to. Never above ``n``.
    """
    n = sum(m for _, m in per_source)
    if n <= 0:
        return 0.0
    p = sum(c for c, _ in per_source) / n
    v = sum((c - p * m) ** 2 for c, m in per_source) / (n * n)
    if p in (0.0, 1.0):
        return float(min(n, len(per_source)))
    if v <= 0.0:  # every source has the cohort's accuracy: no clustering to correct for
        return float(n)
    return float(min(n, p * (1 - p) / v))


def clustered_wilson(pairs: Iterable[tuple[str, bool]]) -> tuple[tuple[float, float] | None, float]:
    """95% Wilson interval (percent) of the accuracy of ``(source, correct)`` reads at their
    :func:`effective_n`, and that effective n."""
    by_source: dict[str, list[int]] = {}
    for source, ok in pairs:
        entry = by_source.setdefault(source, [0, 0])
        entry[0] += bool(ok)
        entry[1] += 1
    if not by_source:
        return None, 0.0
    groups = [(c, m) for c, m in by_source.values()]
    n_eff = effective_n(groups)
    p = sum(c for c, _ in groups) / sum(m for _, m in groups)
    return wilson(p * n_eff, n_eff), n_eff


@dataclass(frozen=True, kw_only=True)
class CohortAccuracy:
    """Accuracy of one cohort over one period: percent, labelled predictions, 95% interval
    (reads clustered by source record: :func:`clustered_wilson`), how many distinct source
    records those predictions were drawn from, and the effective sample size."""

    accuracy: float | None
    n: int
    ci95: tuple[float, float] | None
    sources: int
    n_effective: float = 0.0

    @classmethod
    def of(cls, rows: Sequence[LabelRow]) -> CohortAccuracy:
        n = len(rows)
        k = sum(r.correct for r in rows)
        ci, n_eff = clustered_wilson((r.source or "", r.correct) for r in rows)
        return cls(
            accuracy=round(100.0 * k / n, 2) if n else None,
            n=n,
            ci95=ci,
            sources=len({r.source for r in rows}),
            n_effective=round(n_eff, 1),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "ci95": list(self.ci95) if self.ci95 else None,
            "sources": self.sources,
            "n_effective": self.n_effective,
        }


def scoreable(rows: Iterable[LabelRow], *, trained: Collection[str]) -> list[LabelRow]:
    """The rows whose source is known and in no training split (``trained``: split keys)."""
    return [r for r in rows if r.source and r.source not in trained]


def cohort_accuracy(
    rows: Sequence[LabelRow],
    *,
    drifted: Collection[str],
    start: float,
    end: float,
    versions: Collection[str] | None = None,
) -> dict[str, CohortAccuracy]:
    """Per cohort (``drifted`` devices, the ``clean`` rest, the ``fleet``): the accuracy of
    the rows with ``start <= t < end``, served by one of ``versions`` (any when None)."""
    inside = [r for r in rows if start <= r.t < end and (versions is None or r.version in versions)]
    return {
        "drifted": CohortAccuracy.of([r for r in inside if r.device in drifted]),
        "clean": CohortAccuracy.of([r for r in inside if r.device not in drifted]),
        "fleet": CohortAccuracy.of(inside),
    }


def scope_devices(
    scope: str, *, groups: Mapping[str, str], served: Mapping[str, Collection[str]]
) -> set[str]:
    """The devices a monitoring scope covers: ``device:<id>``, ``group:<name>`` (``groups``:
    device -> group), ``version:<model>@<version>`` (``served``: version -> devices)."""
    kind, _, name = scope.partition(":")
    if kind == "device":
        return {name}
    if kind == "group":
        return {d for d, g in groups.items() if g == name}
    if kind == "version":
        version = name.rpartition("@")[2]
        return set(served.get(version, groups.keys()))
    return set()


@dataclass(frozen=True, kw_only=True)
class Detection:
    """The first alert opened after onset on a scope that contains a drifted device."""

    alert: AlertRow | None
    detection_s: float | None
    windows_total: int | None  # windows received from drifted devices, onset .. the alert
    windows_per_device: float | None  # the same per drifted device: `detection_windows`


def detection(
    alerts: Sequence[AlertRow],
    windows: Sequence[WindowRow],
    *,
    onset: float,
    drifted: Collection[str],
    groups: Mapping[str, str],
    served: Mapping[str, Collection[str]],
) -> Detection:
    """See docs/LOOP_METRICS.md: ``detection_s`` and ``detection_windows``. A window counts
    when it holds data from after the onset (its end is after it) and the hub received it
    no later than the alert opened."""
    drifted_set = set(drifted)
    first = next(
        (
            a
            for a in sorted(alerts, key=lambda a: (a.t, a.id))
            if a.t >= onset and scope_devices(a.scope, groups=groups, served=served) & drifted_set
        ),
        None,
    )
    if first is None or not drifted_set:
        return Detection(alert=None, detection_s=None, windows_total=None, windows_per_device=None)
    total = sum(
        1 for w in windows if w.device in drifted_set and w.end > onset and w.received <= first.t
    )
    return Detection(
        alert=first,
        detection_s=round(first.t - onset, 1),
        windows_total=total,
        windows_per_device=round(total / len(drifted_set), 2),
    )


def false_alarms(
    alerts: Sequence[AlertRow],
    *,
    onset: float,
    drifted: Collection[str],
    groups: Mapping[str, str],
    served: Mapping[str, Collection[str]],
) -> list[AlertRow]:
    """Alerts opened before the onset, or on a scope that contains no drifted device."""
    drifted_set = set(drifted)
    return [
        a
        for a in sorted(alerts, key=lambda a: (a.t, a.id))
        if a.t < onset or not scope_devices(a.scope, groups=groups, served=served) & drifted_set
    ]


@dataclass
class _Rolling:
    size: int
    hits: list[bool] = field(default_factory=list)
    correct: int = 0

    def add(self, ok: bool) -> None:
        self.hits.append(ok)
        self.correct += ok
        if len(self.hits) > self.size:
            self.correct -= self.hits.pop(0)

    @property
    def accuracy(self) -> float | None:
        return 100.0 * self.correct / len(self.hits) if len(self.hits) >= self.size else None


def recovered_after(
    rows: Sequence[LabelRow],
    *,
    onset: float,
    drifted: Collection[str],
    target: float | None,
    tolerance_pp: float = 1.0,
    min_labels: int = 200,
    versions: Collection[str] | None = None,
) -> float | None:
    """Seconds from the onset to the first label time at which the drifted cohort's rolling
    accuracy (its last ``min_labels`` scoreable predictions, all made after the onset by one
    of ``versions``, the retrained ones; any when None) is within ``tolerance_pp`` of
    ``target`` (the oracle's); None if never (or no target).

    Only the retrained versions count: a drift that costs the first version little (noise:
    87% against an oracle of 90%) lets a 200-label window of the *first* version touch the
    bar by chance (seen: "recovered" 21 s after the onset, before any retrain)."""
    if target is None:
        return None
    rolling = _Rolling(size=min_labels)
    for r in sorted(rows, key=lambda r: r.t):
        if r.t < onset or r.device not in drifted:
            continue
        if versions is not None and r.version not in versions:
            continue
        rolling.add(r.correct)
        accuracy = rolling.accuracy
        if accuracy is not None and accuracy >= target - tolerance_pp:
            return round(r.t - onset, 1)
    return None
