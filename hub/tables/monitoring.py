"""Monitoring alerts: drift and degradation findings, per scope, with the numbers behind them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, json_field


class AlertKind(StrEnum):
    DRIFT = "drift"
    DEGRADATION = "degradation"


class AlertBase(HubModel):
    kind: str = Field(max_length=32, index=True, description="drift | degradation")
    scope: str = Field(
        max_length=200,
        index=True,
        description="device:<id> | group:<name> | version:<model>@<version>",
    )
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", index=True, max_length=64)
    detector: str = Field(default="", max_length=64)
    score: float
    threshold: float
    p_value: float | None = None
    at: datetime = Field(default_factory=utcnow, index=True)
    detail: dict[str, Any] = json_field()


class Alert(AlertBase, table=True):
    __tablename__ = "alert"

    id: int | None = Field(default=None, primary_key=True)
    resolved_at: datetime | None = None
    consumed_by: str = Field(default="", max_length=64, description="e.g. a trigger event id")


class AlertPublic(AlertBase):
    id: int
    resolved_at: datetime | None


class MonitorScore(HubModel, table=True):
    """One detector score for one evaluated window of one scope (the monitoring time series)."""

    __tablename__ = "monitor_score"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32, index=True, description="drift | degradation")
    scope: str = Field(max_length=200, index=True)
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", index=True, max_length=64)
    detector: str = Field(default="", max_length=64)
    score: float
    threshold: float
    p_value: float | None = None
    fired: bool = False
    n: int = Field(default=0, description="predictions (drift) or labels (degradation)")
    last_row_id: int = Field(default=0, description="last telemetry_window / feedback_label id")
    at: datetime = Field(default_factory=utcnow, index=True)


CURSOR_HEAD = "*"  # the scope of a (stream, model, version)'s read cursor


class MonitorCursor(HubModel, table=True):
    """Where monitoring stands: per (stream, model, version) the last row read (scope ``*``),
    and per scope the partial window not yet evaluated (``pending``), so that a restart
    neither re-alerts nor skips."""

    __tablename__ = "monitor_cursor"

    stream: str = Field(primary_key=True, max_length=16, description="telemetry | feedback")
    model: str = Field(primary_key=True, max_length=128)
    version: str = Field(primary_key=True, max_length=64)
    scope: str = Field(primary_key=True, max_length=200)
    last_id: int = 0
    pending: dict[str, Any] = json_field()
    updated_at: datetime = Field(default_factory=utcnow)


class MonitorDevice(HubModel, table=True):
    """A device that sent telemetry for a model version (written by the monitor as it reads
    the rows, once per device and version), so the status counts devices per version
    without a ``COUNT(DISTINCT device_id)`` over all telemetry."""

    __tablename__ = "monitor_device"

    model: str = Field(primary_key=True, max_length=128)
    version: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(primary_key=True, max_length=128)
