"""What the demo measured, read back from the hub's database after the run."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from hub.db import make_engine
from hub.tables import FeedbackLabelRow
from hub.tables.monitoring import MonitorScore

if TYPE_CHECKING:
    from hub.demo._story import Timeline

BUCKET_S = 5.0


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class Measurements:
    accuracy_before: float | None
    accuracy_during: float | None
    accuracy_after: float | None
    # per served version: [(seconds since the demo began, accuracy, labels)] in BUCKET_S steps
    accuracy_series: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)
    # per "version/detector": [(seconds, score / threshold)] at version scope
    drift_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    labels: int = 0

    @classmethod
    def collect(
        cls, *, database_url: str, model: str, timeline: Timeline, wall_t0: datetime
    ) -> Measurements:
        engine = make_engine(database_url)
        try:
            with Session(engine) as s:
                labels = s.exec(
                    select(
                        FeedbackLabelRow.at,
                        FeedbackLabelRow.version,
                        FeedbackLabelRow.label,
                        FeedbackLabelRow.predicted_label,
                    ).where(
                        FeedbackLabelRow.model == model,
                        col(FeedbackLabelRow.label).is_not(None),
                        col(FeedbackLabelRow.predicted_label).is_not(None),
                    )
                ).all()
                scores = s.exec(
                    select(MonitorScore).where(
                        MonitorScore.model == model,
                        MonitorScore.kind == "drift",
                        col(MonitorScore.scope).startswith("version:"),
                    )
                ).all()
        finally:
            engine.dispose()
        rows = [
            ((_aware(at) - wall_t0).total_seconds(), str(v), int(y) == int(p))
            for at, v, y, p in labels
            if y is not None and p is not None
        ]
        marks = timeline.marks

        def accuracy(start: str, end: str) -> float | None:
            lo, hi = marks.get(start), marks.get(end)
            if lo is None or hi is None:
                return None
            hits = [ok for t, _, ok in rows if lo <= t < hi]
            return round(100.0 * sum(hits) / len(hits), 2) if hits else None

        buckets: dict[tuple[str, int], list[bool]] = defaultdict(list)
        for t, version, ok in rows:
            buckets[(version, int(t // BUCKET_S))].append(ok)
        series: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
        for (version, b), hits in sorted(buckets.items(), key=lambda kv: kv[0][1]):
            series[version].append(((b + 0.5) * BUCKET_S, 100.0 * sum(hits) / len(hits), len(hits)))
        # one point per evaluation and detector: the largest score/threshold of its windows
        peaks: dict[tuple[str, float], float] = {}
        for score in scores:
            t = round((_aware(score.at) - wall_t0) / timedelta(seconds=1), 1)
            ratio = score.score / score.threshold if score.threshold else 0.0
            key = (f"v{score.version} {score.detector}", t)
            peaks[key] = max(peaks.get(key, 0.0), ratio)
        drift: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for (name, t), ratio in sorted(peaks.items(), key=lambda kv: kv[0][1]):
            drift[name].append((t, max(ratio, 0.01)))
        return cls(
            accuracy_before=accuracy("rollout1_end", "drift_onset"),
            accuracy_during=accuracy("drift_onset", "canary_start"),
            accuracy_after=accuracy("canary_end", "end"),
            accuracy_series=dict(series),
            drift_series=dict(drift),
            labels=len(rows),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy_before": self.accuracy_before,
            "accuracy_during_drift": self.accuracy_during,
            "accuracy_after": self.accuracy_after,
            "labels": self.labels,
        }
