"""Dataset versions: immutable, content-addressed, with validation and lineage."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import UniqueConstraint
from sqlmodel import Field

from hub.core.clock import utcnow
from hub.tables.columns import HubModel, json_field

ValidationStatus = Literal["passed", "failed", "overridden"]


class DatasetVersionBase(HubModel):
    name: str = Field(index=True, max_length=128)
    version: int = Field(ge=1)
    digest: str = Field(index=True, description="content address of the records (sha256)")
    source: str
    num_records: int
    feature_shape: list[int] = json_field(default_factory=list)
    labelled: bool
    split_fractions: dict[str, float] = json_field()
    splits: dict[str, int] = json_field()
    validation_status: str = Field(description="passed | failed | overridden")
    validation: dict[str, Any] = json_field()
    override_reason: str | None = None
    lineage: dict[str, Any] = json_field()
    data_schema: dict[str, Any] = json_field()
    artifact_digest: str
    artifact_size: int
    created_at: datetime = Field(default_factory=utcnow)


class DatasetVersion(DatasetVersionBase, table=True):
    __tablename__ = "dataset_version"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    parent_id: int | None = Field(default=None, foreign_key="dataset_version.id")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class DatasetVersionPublic(DatasetVersionBase):
    id: int
    ref: str
    parent: str | None
