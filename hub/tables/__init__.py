"""SQLModel tables and their API families (Base / Create / Public / table)."""

from hub.tables.datasets import DatasetVersion, DatasetVersionBase, DatasetVersionPublic
from hub.tables.devices import Device, DeviceCreate, DevicePublic, DeviceUpdate
from hub.tables.fleet import (
    DeploymentEventRow,
    FeedbackLabelRow,
    FieldSample,
    IngestSeq,
    TelemetryWindowRow,
)
from hub.tables.monitoring import Alert, AlertKind, AlertPublic
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
from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus

__all__ = [
    "Alert",
    "AlertKind",
    "AlertPublic",
    "AliasMove",
    "Bundle",
    "BundlePublic",
    "DatasetVersion",
    "DatasetVersionBase",
    "DatasetVersionPublic",
    "DeploymentEventRow",
    "Device",
    "DeviceCreate",
    "DevicePublic",
    "DeviceUpdate",
    "FeedbackLabelRow",
    "FieldSample",
    "IngestSeq",
    "MetricIn",
    "ModelAlias",
    "ModelVersion",
    "ModelVersionPublic",
    "RegisteredModel",
    "RunArtifact",
    "RunCreate",
    "RunMetric",
    "RunPublic",
    "TelemetryWindowRow",
    "TrainingPolicy",
    "TrainingRun",
    "TriggerEvent",
    "TriggerKind",
    "TriggerStatus",
]
