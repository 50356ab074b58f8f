"""Experiment tracking and the model registry: runs, metrics, models, versions, aliases."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import StrictFloat, StringConstraints
from sqlalchemy import UniqueConstraint
from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, JsonInt, json_field

# --- runs -------------------------------------------------------------------------------

DATASET_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}@(latest|[0-9]{1,9})$"
DatasetRef = Annotated[str, StringConstraints(pattern=DATASET_REF_PATTERN)]


class RunBase(HubModel):
    spec: str = Field(index=True, description="model spec name, e.g. digits-cnn")
    params: dict[str, Any] = json_field()
    code_version: str = Field(description="digest of the model spec's source")
    tags: dict[str, str] = json_field()


class RunCreate(RunBase):
    dataset: DatasetRef = Field(description="dataset version as NAME@VERSION")


class TrainingRun(RunBase, table=True):
    __tablename__ = "training_run"

    id: str = Field(primary_key=True, max_length=32)
    dataset_version_id: int = Field(foreign_key="dataset_version.id", index=True)
    status: str = Field(default="running", description="running | finished | failed")
    metrics: dict[str, float] = json_field()
    error: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RunPublic(RunBase):
    id: str
    dataset_version: str
    status: str
    metrics: dict[str, float]
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    artifacts: dict[str, str] = Field(default_factory=dict, description="name -> digest")


class RunMetric(HubModel, table=True):
    __tablename__ = "run_metric"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="training_run.id", index=True)
    key: str
    step: int
    value: float
    at: datetime = Field(default_factory=utcnow)


class MetricIn(HubModel):
    key: str = Field(min_length=1, max_length=128)
    value: StrictFloat
    step: JsonInt = Field(default=0, ge=0, le=2**31 - 1)


class RunArtifact(HubModel, table=True):
    __tablename__ = "run_artifact"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="training_run.id", index=True)
    name: str
    digest: str
    size: int


# --- registry ---------------------------------------------------------------------------


class RegisteredModel(HubModel, table=True):
    __tablename__ = "registered_model"

    name: str = Field(primary_key=True, max_length=128)
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersionBase(HubModel):
    model_name: str = Field(foreign_key="registered_model.name", index=True)
    version: int = Field(ge=1)
    description: str = ""
    metrics: dict[str, float] = json_field()
    artifact_digest: str
    artifact_size: int
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersion(ModelVersionBase, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str | None = Field(default=None, foreign_key="training_run.id", index=True)


class ModelVersionPublic(ModelVersionBase):
    id: int
    ref: str
    run_id: str | None
    aliases: list[str]


class ModelAlias(HubModel, table=True):
    __tablename__ = "model_alias"

    model_name: str = Field(foreign_key="registered_model.name", primary_key=True)
    alias: str = Field(primary_key=True, max_length=64)
    model_version_id: int = Field(foreign_key="model_version.id")
    updated_at: datetime = Field(default_factory=utcnow)


class AliasMove(HubModel, table=True):
    """Audit trail: every time an alias is set, moved or removed."""

    __tablename__ = "alias_move"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(index=True)
    alias: str
    from_version: int | None
    to_version: int | None
    at: datetime = Field(default_factory=utcnow)
    # a move by a rollout's promotion: the rollout, whether its gates had the evidence the
    # promotion needed (False: promoted without it, by override), and each gate's outcome
    # (passed | failed | insufficient). By hand (PUT .../aliases/...): "", None, {}.
    rollout_id: str = Field(default="", max_length=64)
    verified: bool | None = None
    evidence: dict[str, Any] = json_field()


class BundleBase(HubModel):
    digest: str = Field(unique=True, index=True)
    size: int
    formats: list[str] = json_field(default_factory=list)
    manifest: dict[str, Any] = json_field()
    created_at: datetime = Field(default_factory=utcnow)


class Bundle(BundleBase, table=True):
    __tablename__ = "bundle"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)


class BundlePublic(BundleBase):
    id: int
    model: str
