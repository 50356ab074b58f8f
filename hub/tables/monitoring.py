"""Monitoring alerts: drift and degradation findings, per scope, with the numbers behind them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Field, SQLModel

from hub.tables._common import json_field, utcnow


class AlertKind(StrEnum):
    DRIFT = "drift"
    DEGRADATION = "degradation"


class AlertBase(SQLModel):
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
