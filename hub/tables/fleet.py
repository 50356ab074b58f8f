"""What devices send back, as the ingest stores it: events, telemetry windows, labels, samples.

Written only by ``hub.ingest``; read by rollouts (gates), monitoring (drift, accuracy) and
training (field data). Every device-produced row keeps the device's own time (``at`` /
``window_start``) and the hub's receive time (``received_at``), both timezone-aware UTC.
Dedupe is by ``(device_id, stream, seq)`` in :class:`IngestSeq`, inserted in the same
transaction as the data it guards; deployment events dedupe by their own ``event_id``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, LargeBinary, UniqueConstraint
from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, bigint_field, json_field


class IngestSeq(HubModel, table=True):
    """One accepted (device, stream, seq): the dedupe key and the basis of gap reports."""

    __tablename__ = "ingest_seq"

    device_id: str = Field(primary_key=True, max_length=128)
    stream: str = Field(primary_key=True, max_length=16, description="telemetry | feedback")
    seq: int = bigint_field(primary_key=True)
    received_at: datetime = Field(default_factory=utcnow)


class DeploymentEventRow(HubModel, table=True):
    """A ``DeploymentEvent`` from a device (kind as lower-case text: ``received`` ...)."""

    __tablename__ = "deployment_event"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    device_id: str = Field(index=True, max_length=128)
    command_id: str = Field(index=True, max_length=64)
    rollout_id: str = Field(default="", index=True, max_length=64)
    kind: str = Field(max_length=16, index=True)
    progress: float = 0.0
    reason: str = ""
    model: str = Field(default="", max_length=128)
    version: str = Field(default="", max_length=64)
    at: datetime
    received_at: datetime = Field(default_factory=utcnow, index=True)


class TelemetryWindowRow(HubModel, table=True):
    """One ``TelemetryWindow``. Histograms are stored as ``{"edges": [...], "counts": [...]}``;
    ``shadow`` as a dict with the ``ShadowStats`` fields or ``{}``. ``group`` is the device's
    group at ingest. ``packed``: the window as the device sent it, less its samples (format
    byte + protobuf, :mod:`hub.tables.packed`), where the feature sketches are read from;
    rows written before it (``packed`` NULL) hold them in ``features`` (a list of dicts with
    the ``FeatureSketch`` fields), newer rows hold ``[]`` there. Read the sketches with
    ``hub.tables.packed.feature_counts`` / ``feature_dicts`` (either form)."""

    __tablename__ = "telemetry_window"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=128)
    seq: int = bigint_field()
    group: str = Field(default="default", index=True, max_length=128)
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", index=True, max_length=64)
    bundle_digest: str = Field(default="", max_length=80)
    window_start: datetime = Field(index=True)
    window_end: datetime
    count: int = bigint_field()
    errors: int = bigint_field()
    latency: dict[str, Any] = json_field()
    output_counts: list[int] = json_field(default_factory=list)
    confidence: dict[str, Any] = json_field()
    features: list[dict[str, Any]] = json_field(default_factory=list)
    shadow: dict[str, Any] = json_field()
    num_samples: int = 0
    dropped_windows: int = bigint_field()
    received_at: datetime = Field(default_factory=utcnow, index=True)
    packed: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class FeedbackLabelRow(HubModel, table=True):
    """One ``Label`` of a ``Feedback`` message: ground truth for an earlier prediction."""

    __tablename__ = "feedback_label"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=128)
    seq: int = bigint_field()  # the Feedback message's seq
    prediction_id: str = Field(index=True, max_length=64)
    label: int | None = None
    value: float | None = None
    predicted_label: int | None = None
    predicted_value: float | None = None
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", index=True, max_length=64)
    # the record the input was drawn from, when the device knows it (Label.source): field
    # records of one source share a dataset split, and no model is scored on its own sources
    source: str | None = Field(default=None, max_length=128)
    at: datetime
    received_at: datetime = Field(default_factory=utcnow, index=True)


class FieldSample(HubModel, table=True):
    """A raw input from a telemetry window's reservoir (field data for retraining, MMD)."""

    __tablename__ = "field_sample"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=128)
    prediction_id: str = Field(index=True, max_length=64)
    values: list[float] = json_field(default_factory=list)
    shape: list[int] = json_field(default_factory=list)
    predicted_label: int | None = None
    model: str = Field(default="", index=True, max_length=128)
    version: str = Field(default="", index=True, max_length=64)
    at: datetime = Field(index=True)
    received_at: datetime = Field(default_factory=utcnow)
