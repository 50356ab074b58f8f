"""Phased rollouts: the rollout, one row per targeted device, and an event log.

Everything the controller needs to resume after a crash lives here: command ids are stored
before a command is published (``published_at`` is set after the broker's PUBACK), so a
restarted controller republishes the *same* command and agents dedupe it.
See docs/ROLLOUTS.md for the state machine.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, bigint_field, json_field


class RolloutState(StrEnum):
    SHADOWING = "shadowing"  # pre-rollout shadow phase: the candidate runs beside, serves nothing
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


class DeviceState(StrEnum):
    PENDING = "pending"  # targeted, not commanded yet
    COMMANDED = "commanded"  # command id stored (published once published_at is set)
    RECEIVED = "received"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    ACTIVATED = "activated"
    HEALTHY = "healthy"
    FAILED = "failed"  # the device refused or lost the candidate (it keeps its previous model)
    TIMED_OUT = "timed_out"  # no final answer within device_timeout_s (may still report later)
    SKIPPED = "skipped"  # never commanded (rollout cancelled or rolled back first)
    ROLLING_BACK = "rolling_back"  # a Rollback command is out
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


class Rollout(HubModel, table=True):
    __tablename__ = "rollout"

    id: str = Field(primary_key=True, max_length=64)
    model: str = Field(index=True, max_length=128)
    version: str = Field(max_length=64)
    bundle_digest: str = Field(max_length=80)
    bundle_size: int = bigint_field()
    selector: str
    phases: list[dict[str, Any]] = json_field(default_factory=list)  # {"spec", "approval"}
    gates: dict[str, Any] = json_field()
    on_failure: str = Field(default="rollback", max_length=16, description="pause | rollback")
    bake_s: float = 60.0
    min_reporting: int = 1
    device_timeout_s: float = 600.0
    probation_s: int | None = None
    join_phase: str = Field(default="last", max_length=16, description="last | current")
    max_commands_per_s: float | None = None
    max_concurrent_downloads: int | None = None
    # pre-rollout shadow phase ({} = none): fraction_of_devices, sample_fraction, bake_s,
    # min_agreement; shadow_done once it passed, failed or was advanced past
    shadow: dict[str, Any] = json_field()
    shadow_started_at: datetime | None = None
    shadow_answered_at: datetime | None = None  # every shadow device answered or timed out
    shadow_done: bool = False
    promote_alias: str = Field(default="production", max_length=64, description="'' = none")
    state: str = Field(default=RolloutState.RUNNING, index=True, max_length=32)
    phase: int = 0
    phase_started_at: datetime | None = None
    phase_commanded_at: datetime | None = None
    approved_phase: int = -1
    phase_results: dict[str, Any] = json_field()  # str(phase) -> {"state", "gates", "at"}
    # once the last phase passed: alias, status (verified | unverified | withheld | none),
    # promoted, verified, the evidence (hub.rollouts.gates.Evidence), detail, at
    promotion: dict[str, Any] = json_field()
    reason: str = ""
    created_by: str = Field(default="", max_length=128)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RolloutDevice(HubModel, table=True):
    __tablename__ = "rollout_device"

    rollout_id: str = Field(primary_key=True, foreign_key="rollout.id", max_length=64)
    device_id: str = Field(primary_key=True, max_length=128)
    phase: int = Field(default=-1, description="-1: not chosen for a phase yet")
    late: bool = Field(default=False, description="matched the selector after the start")
    state: str = Field(default=DeviceState.PENDING, index=True, max_length=32)
    command_id: str = Field(default="", index=True, max_length=64)
    issued_at_ms: int = bigint_field()
    published_at: datetime | None = None
    commanded_at: datetime | None = None
    attempts: int = 0
    previous_model: str = Field(default="", max_length=128)
    previous_version: str = Field(default="", max_length=64)
    previous_digest: str = Field(default="", max_length=80)
    rollback_command_id: str = Field(default="", index=True, max_length=64)
    rollback_issued_at_ms: int = bigint_field()
    rollback_published_at: datetime | None = None
    rollback_attempts: int = 0
    reason: str = ""
    updated_at: datetime = Field(default_factory=utcnow)


class RolloutEvent(HubModel, table=True):
    """What the controller (or an operator) did to a rollout, and why."""

    __tablename__ = "rollout_event"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=32)
    phase: int | None = None
    device_id: str = Field(default="", max_length=128)
    detail: str = ""
    data: dict[str, Any] = json_field()
    at: datetime = Field(default_factory=utcnow, index=True)


class ShadowState(StrEnum):
    COMMANDED = "commanded"
    RECEIVED = "received"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    SHADOWING = "shadowing"  # the candidate runs beside the active model
    FAILED = "failed"  # it did not load; the device serves as before
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"  # a Shadow stop=true was acknowledged


class RolloutShadow(HubModel, table=True):
    """One device of a rollout's pre-rollout shadow sample: the ``Shadow`` command that starts
    the candidate beside the active model, and the one that stops it (ids stored before
    publishing, like deploy commands)."""

    __tablename__ = "rollout_shadow"

    rollout_id: str = Field(primary_key=True, foreign_key="rollout.id", max_length=64)
    device_id: str = Field(primary_key=True, max_length=128)
    state: str = Field(default=ShadowState.COMMANDED, max_length=32)
    command_id: str = Field(default="", index=True, max_length=64)
    issued_at_ms: int = bigint_field()
    commanded_at: datetime | None = None
    published_at: datetime | None = None
    stop_command_id: str = Field(default="", index=True, max_length=64)
    stop_issued_at_ms: int = bigint_field()
    stop_published_at: datetime | None = None
    reason: str = ""
