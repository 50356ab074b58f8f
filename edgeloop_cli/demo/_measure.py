"""What the loop did, read back from the hub's database and artifact store after the run.

Everything a figure needs comes from what the hub stored (labels with their source records,
alerts, telemetry windows, the registered versions' training splits); the figures themselves
are computed by :mod:`edgeloop_cli.demo.metrics`, as docs/LOOP_METRICS.md defines them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from edgeloop_cli.demo.metrics import AlertRow, LabelRow, WindowRow
from hub.core.artifacts import open_store
from hub.core.clock import aware
from hub.core.db import make_engine
from hub.datasets import service as datasets
from hub.datasets.splits import split_key
from hub.tables import FeedbackLabelRow
from hub.tables.fleet import TelemetryWindowRow
from hub.tables.monitoring import Alert, MonitorScore
from hub.tables.registry import ModelVersion, TrainingRun

BUCKET_S = 5.0


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """The run's raw material, on the demo's clock (seconds since its timeline began)."""

    labels: list[LabelRow]
    alerts: list[AlertRow]
    windows: list[WindowRow]
    trained: dict[str, frozenset[str]]  # model version -> split keys of its training split
    served: dict[str, set[str]]  # model version -> devices whose telemetry it served
    # per served version: [(seconds, accuracy %, labels)] in BUCKET_S steps (scoreable rows)
    accuracy_series: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)
    # per "version detector": [(seconds, score / threshold)] at version scope
    drift_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def trained_anywhere(self) -> frozenset[str]:
        """Split keys in the training split of any model version of the run."""
        return frozenset().union(*self.trained.values()) if self.trained else frozenset()

    @classmethod
    def collect(
        cls, *, database_url: str, artifact_url: str, model: str, wall_t0: datetime
    ) -> RunRecord:
        def t(at: datetime) -> float:
            return (aware(at) - wall_t0).total_seconds()

        engine = make_engine(database_url)
        store = open_store(artifact_url)
        try:
            with Session(engine) as s:
                labels = s.execute(
                    sa_select(
                        col(FeedbackLabelRow.at),
                        col(FeedbackLabelRow.device_id),
                        col(FeedbackLabelRow.version),
                        col(FeedbackLabelRow.label),
                        col(FeedbackLabelRow.predicted_label),
                        col(FeedbackLabelRow.source),
                    ).where(
                        col(FeedbackLabelRow.model) == model,
                        col(FeedbackLabelRow.label).is_not(None),
                        col(FeedbackLabelRow.predicted_label).is_not(None),
                    )
                ).all()
                alerts = s.exec(select(Alert).where(Alert.model == model)).all()
                windows = s.exec(
                    select(
                        TelemetryWindowRow.device_id,
                        TelemetryWindowRow.version,
                        TelemetryWindowRow.window_end,
                        TelemetryWindowRow.received_at,
                    ).where(TelemetryWindowRow.model == model)
                ).all()
                scores = s.exec(
                    select(MonitorScore).where(
                        MonitorScore.model == model,
                        MonitorScore.kind == "drift",
                        col(MonitorScore.scope).startswith("version:"),
                    )
                ).all()
                trained: dict[str, frozenset[str]] = {}
                versions = s.exec(
                    select(ModelVersion, TrainingRun)
                    .join(TrainingRun, col(ModelVersion.run_id) == col(TrainingRun.id))
                    .where(ModelVersion.model_name == model)
                ).all()
                for mv, run in versions:
                    dv = datasets.get_by_id(s, version_id=run.dataset_version_id)
                    train = datasets.load_split(s, store, version=dv, split="train")
                    trained[str(mv.version)] = frozenset(split_key(i) for i in train.ids.tolist())
        finally:
            engine.dispose()
        rows = [
            LabelRow(t=t(at), device=d, version=str(v), correct=int(y) == int(p), source=src)
            for at, d, v, y, p, src in labels
            if y is not None and p is not None
        ]
        served: dict[str, set[str]] = defaultdict(set)
        window_rows = []
        for device, version, end, received in windows:
            served[str(version)].add(device)
            window_rows.append(WindowRow(device=device, end=t(end), received=t(received)))
        record = cls(
            labels=rows,
            alerts=[
                AlertRow(
                    id=int(a.id or 0),
                    # when the hub raised it (``at`` is when its evidence arrived): detection
                    # counts the monitor's lag
                    t=t(_raised(a)),
                    kind=a.kind,
                    scope=a.scope,
                    detector=a.detector,
                    version=a.version,
                )
                for a in alerts
            ],
            windows=window_rows,
            trained=trained,
            served=dict(served),
        )
        return record._with_series(scores=scores, wall_t0=wall_t0)

    def _with_series(self, *, scores: Any, wall_t0: datetime) -> RunRecord:
        trained = self.trained_anywhere
        buckets: dict[tuple[str, int], list[bool]] = defaultdict(list)
        for r in self.labels:
            if r.source and r.source not in trained:
                buckets[(r.version, int(r.t // BUCKET_S))].append(r.correct)
        series: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
        for (version, b), hits in sorted(buckets.items(), key=lambda kv: kv[0][1]):
            series[version].append(((b + 0.5) * BUCKET_S, 100.0 * sum(hits) / len(hits), len(hits)))
        # one point per evaluation and detector: the largest score/threshold of its windows
        peaks: dict[tuple[str, float], float] = {}
        for score in scores:
            when = round((aware(score.at) - wall_t0).total_seconds(), 1)
            ratio = score.score / score.threshold if score.threshold else 0.0
            key = (f"v{score.version} {score.detector}", when)
            peaks[key] = max(peaks.get(key, 0.0), ratio)
        drift: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for (name, when), ratio in sorted(peaks.items(), key=lambda kv: kv[0][1]):
            drift[name].append((when, max(ratio, 0.01)))
        self.accuracy_series.update(series)
        self.drift_series.update(drift)
        return self


def _raised(alert: Alert) -> datetime:
    """When the monitor raised ``alert`` (its detail's ``raised_at``; older alerts: ``at``)."""
    raised = (alert.detail or {}).get("raised_at")
    return datetime.fromisoformat(raised) if isinstance(raised, str) else alert.at
