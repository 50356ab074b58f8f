"""SQLModel tables and their API families (Base / Create / Public / table)."""

from hub.tables.datasets import DatasetVersion, DatasetVersionBase, DatasetVersionPublic
from hub.tables.devices import Device, DeviceCreate, DevicePublic, DeviceUpdate
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
    "AliasMove",
    "Bundle",
    "BundlePublic",
    "DatasetVersion",
    "DatasetVersionBase",
    "DatasetVersionPublic",
    "Device",
    "DeviceCreate",
    "DevicePublic",
    "DeviceUpdate",
    "MetricIn",
    "ModelAlias",
    "ModelVersion",
    "ModelVersionPublic",
    "RegisteredModel",
    "RunArtifact",
    "RunCreate",
    "RunMetric",
    "RunPublic",
    "TrainingPolicy",
    "TrainingRun",
    "TriggerEvent",
    "TriggerKind",
    "TriggerStatus",
]
