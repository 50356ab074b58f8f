"""Hourly roll-ups of telemetry windows: what stays once raw windows pass their retention."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from hub.tables._common import json_field, utcnow


class TelemetryRollup(SQLModel, table=True):
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
