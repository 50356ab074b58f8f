"""Hourly roll-ups: what stays of telemetry windows, feedback labels and monitor scores once
the raw rows pass their retention (``hub.retention.service``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, json_field


class TelemetryRollup(HubModel, table=True):
    """Sums over the telemetry windows of one (model, version, group) starting in one hour.

    ``latency`` is ``{"edges": [...], "counts": [...]}`` summed over windows with the same
    edges; windows whose edges differ are counted in ``latency_mismatched`` only.
    """

    __tablename__ = "telemetry_rollup"
    __table_args__ = (
        UniqueConstraint("model", "version", "group", "hour", name="uq_rollup_scope_hour"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", max_length=64)
    group: str = Field(default="default", max_length=128)
    hour: datetime = Field(index=True, description="start of the hour (UTC)")
    windows: int = 0
    count: int = 0
    errors: int = 0
    latency: dict[str, Any] = json_field()
    latency_mismatched: int = 0
    output_counts: list[int] = json_field(default_factory=list)
    updated_at: datetime = Field(default_factory=utcnow)


class LabelRollup(HubModel, table=True):
    """The feedback labels of one ``model@version`` received in one hour, once pruned.

    ``scored``: labels with both a class label and a predicted label (what live accuracy
    counts); ``correct``: those where the two agree.
    """

    __tablename__ = "label_rollup"
    __table_args__ = (UniqueConstraint("model", "version", "hour", name="uq_label_rollup_hour"),)

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", max_length=64)
    hour: datetime = Field(index=True, description="start of the hour (UTC) of received_at")
    labels: int = 0
    scored: int = 0
    correct: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


class MonitorScoreRollup(HubModel, table=True):
    """The monitor scores of one (kind, scope, model, version, detector) in one hour, once
    pruned: how many, how many fired, the labels/predictions they covered, and the scores'
    sum, maximum and largest ``score / threshold`` (what ``drift_score`` compares)."""

    __tablename__ = "monitor_score_rollup"
    __table_args__ = (
        UniqueConstraint(
            "kind", "scope", "model", "version", "detector", "hour", name="uq_score_rollup_hour"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32, index=True)
    scope: str = Field(max_length=200, index=True)
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", max_length=64)
    detector: str = Field(default="", max_length=64)
    hour: datetime = Field(index=True, description="start of the hour (UTC) of at")
    scores: int = 0
    fired: int = 0
    n: int = 0
    score_sum: float = 0.0
    score_max: float = 0.0
    ratio_max: float = 0.0
    threshold: float = Field(default=0.0, description="the threshold of the hour's last score")
    last_row_id: int = 0
    updated_at: datetime = Field(default_factory=utcnow)
