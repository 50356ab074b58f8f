"""Continuous-training tables: one policy per model, and an audit row per trigger."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, json_field


class TriggerKind(StrEnum):
    """Why a run was started. Stored as plain text, so new kinds need no migration."""

    ON_DEMAND = "on_demand"
    SCHEDULE = "schedule"
    NEW_DATA = "new_data"
    NEW_CODE = "new_code"
    DRIFT = "drift"  # an open drift alert from monitoring
    DEGRADATION = "degradation"  # live accuracy fell below the evaluated one


class TriggerStatus(StrEnum):
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    SKIPPED = "skipped"


class TrainingPolicy(HubModel, table=True):
    """When to retrain ``model_name``: ``spec`` on the latest version of ``dataset``."""

    __tablename__ = "training_policy"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(unique=True, index=True, max_length=128)
    spec: str = Field(description="model spec name or module:Class")
    dataset: str = Field(max_length=128, description="dataset NAME; runs use its latest version")
    params: dict[str, Any] = json_field()
    enabled: bool = True
    schedule_interval_s: int | None = Field(default=None, description="retrain every N seconds")
    on_new_data: bool = True
    on_new_code: bool = True
    debounce_s: int = Field(default=300, description="no trigger within N s of the last run")
    on_drift: bool = True
    on_degradation: bool = True
    field_data: bool = Field(
        default=True,
        description="before a drift/degradation run, merge labelled field samples into a new "
        "dataset version",
    )
    min_field_records: int = Field(default=50, description="labelled field samples needed")
    min_incident_records: int = Field(
        default=1000,
        description="labelled field samples from the incident's scopes, taken after its first "
        "alert, needed before a drift/degradation run (the retrain learns the new regime)",
    )
    fine_tune_epochs: int = Field(
        default=10,
        description="drift/degradation runs start from the drifted version's weights and "
        "train this many epochs; 0 trains afresh with the spec's epochs",
    )
    field_device_share: float = Field(
        default=0.1,
        description="no device keeps more than max(2/N, this) of a field-data version "
        "(N devices; a capped device keeps its newest records)",
    )
    canary: dict[str, Any] = json_field()  # {} = none; else rollout settings (selector, phases..)
    handled_versions: list[str] = json_field(default_factory=list)  # incidents already retrained
    last_dataset_version_id: int | None = None
    last_code_version: str | None = None
    last_run_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class TriggerEvent(HubModel, table=True):
    """One trigger decision: what fired, why, and what became of the run."""

    __tablename__ = "trigger_event"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(index=True, max_length=128)
    kind: str = Field(
        max_length=32,
        description="on_demand | schedule | new_data | new_code | drift | degradation",
    )
    reason: str
    at: datetime = Field(default_factory=utcnow, index=True)
    run_id: str | None = Field(default=None, index=True, max_length=32)
    status: str = Field(
        default="started", index=True, description="started|finished|failed|skipped"
    )
    detail: str = ""
    dataset_version_id: int | None = None
    code_version: str | None = None
    alert_ids: list[int] = json_field(default_factory=list)
    model_version: str | None = Field(default=None, max_length=64)
    bundle_digest: str | None = Field(default=None, max_length=80)
    rollout_id: str | None = Field(default=None, max_length=64)
