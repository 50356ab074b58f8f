"""SQLModel tables and their API families (Base / Create / Public / table), and the schema's
``create_all`` / ``drop_all`` (importing this package registers every table)."""

from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from hub.tables.columns import JsonInt
from hub.tables.datasets import DatasetVersion, DatasetVersionBase, DatasetVersionPublic
from hub.tables.devices import Device, DeviceCreate, DevicePublic, DeviceUpdate
from hub.tables.fleet import (
    DeploymentEventRow,
    FeedbackLabelRow,
    FieldSample,
    IngestSeq,
    TelemetryWindowRow,
)
from hub.tables.monitoring import (
    Alert,
    AlertKind,
    AlertPublic,
    MonitorCursor,
    MonitorDevice,
    MonitorScore,
)
from hub.tables.quality import LabelQuarantine, LabelQuarantinePublic
from hub.tables.registry import (
    AliasMove,
    Bundle,
    BundlePublic,
    MetricIn,
    ModelAlias,
    ModelVersion,
    ModelVersionPublic,
    RegisteredModel,
    RunArtifact,
    RunCreate,
    RunMetric,
    RunPublic,
    TrainingRun,
)
from hub.tables.rollouts import Rollout, RolloutDevice, RolloutEvent, RolloutShadow
from hub.tables.rollups import LabelRollup, MonitorScoreRollup, TelemetryRollup
from hub.tables.security import (
    ApiToken,
    ApiTokenCreate,
    ApiTokenPublic,
    DeviceCertificate,
    DeviceCredential,
    EnrollmentToken,
    EnrollmentTokenCreate,
    EnrollmentTokenPublic,
    TokenScope,
)
from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus

__all__ = [
    "Alert",
    "AlertKind",
    "AlertPublic",
    "AliasMove",
    "ApiToken",
    "ApiTokenCreate",
    "ApiTokenPublic",
    "Bundle",
    "BundlePublic",
    "DatasetVersion",
    "DatasetVersionBase",
    "DatasetVersionPublic",
    "DeploymentEventRow",
    "Device",
    "DeviceCertificate",
    "DeviceCreate",
    "DeviceCredential",
    "DevicePublic",
    "DeviceUpdate",
    "EnrollmentToken",
    "EnrollmentTokenCreate",
    "EnrollmentTokenPublic",
    "FeedbackLabelRow",
    "FieldSample",
    "IngestSeq",
    "JsonInt",
    "LabelQuarantine",
    "LabelQuarantinePublic",
    "LabelRollup",
    "MetricIn",
    "ModelAlias",
    "ModelVersion",
    "ModelVersionPublic",
    "MonitorCursor",
    "MonitorDevice",
    "MonitorScore",
    "MonitorScoreRollup",
    "RegisteredModel",
    "Rollout",
    "RolloutDevice",
    "RolloutEvent",
    "RolloutShadow",
    "RunArtifact",
    "RunCreate",
    "RunMetric",
    "RunPublic",
    "TelemetryRollup",
    "TelemetryWindowRow",
    "TokenScope",
    "TrainingPolicy",
    "TrainingRun",
    "TriggerEvent",
    "TriggerKind",
    "TriggerStatus",
    "create_all",
    "drop_all",
]


def create_all(engine: Engine) -> None:
    """Create every table the hub uses that is missing (existing ones are left as they are)."""
    SQLModel.metadata.create_all(engine)


def drop_all(engine: Engine) -> None:
    SQLModel.metadata.drop_all(engine)
