"""Label quality: devices whose labels are kept out of retraining and the canary's gates.

Written by ``hub.triggers.label_quality`` (the consensus check before a field-data version)
and by an operator lifting a quarantine; read by the triggers (field data) and the rollout
gates (label accuracy). One row per (device, model): a lifted quarantine keeps its row with
``active = False`` and the lift's time and reason, so the history stays readable.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel


class LabelQuarantineBase(HubModel):
    device_id: str = Field(index=True, max_length=128)
    model: str = Field(index=True, max_length=128)
    active: bool = Field(default=True, index=True, description="False once an operator lifted it")
    labels: int = Field(default=0, description="the device's labels that had a consensus")
    disagreements: int = Field(default=0, description="of those, labels the consensus differs on")
    rate: float = 0.0
    baseline: float = Field(default=0.0, description="pooled disagreement of the other devices")
    p_value: float = 1.0
    reason: str = ""
    at: datetime = Field(default_factory=utcnow)
    lifted_at: datetime | None = None
    lifted_reason: str = ""


class LabelQuarantine(LabelQuarantineBase, table=True):
    __tablename__ = "label_quarantine"
    __table_args__ = (UniqueConstraint("device_id", "model", name="uq_label_quarantine"),)

    id: int | None = Field(default=None, primary_key=True)


class LabelQuarantinePublic(LabelQuarantineBase):
    id: int
