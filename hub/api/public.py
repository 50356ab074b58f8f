"""The API's answers that are not a table's ``*Public`` family (those live in :mod:`hub.tables`).

Every route declares one of these (or a table's) as its ``response_model``, so the OpenAPI
document says what each answer holds. Parts whose keys are open by nature (metrics, params,
detector scores, gate results) stay ``dict[str, Any]`` inside a typed answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hub.datasets.reports import ValidationReport
from hub.tables import (
    AlertPublic,
    ApiTokenPublic,
    DatasetVersionPublic,
    EnrollmentTokenPublic,
    ModelVersionPublic,
    RunPublic,
)

__all__ = [
    "AliasMovePublic",
    "ApiTokenCreatedPublic",
    "ArtifactPublic",
    "BundleRefPublic",
    "CredentialStatusPublic",
    "DatasetImportPublic",
    "DatasetRefPublic",
    "DeviceKeyPublic",
    "DeviceRevokedPublic",
    "EnrollmentPublic",
    "EnrollmentTokenCreatedPublic",
    "EvaluationPublic",
    "HealthPublic",
    "IngestStatsPublic",
    "KeyRotationPublic",
    "KeysPublic",
    "LineagePublic",
    "ModelSummaryPublic",
    "MonitorStatusPublic",
    "MqttHealthPublic",
    "PackageOutcomePublic",
    "PolicyListPublic",
    "PromotionEvidencePublic",
    "PromotionPublic",
    "RolloutPublic",
    "RolloutSummaryPublic",
    "TrainOutcomePublic",
    "TrainingPolicyPublic",
    "TriggerEventListPublic",
    "TriggerEventPublic",
    "ValidationReportPublic",
]


class _Answer(BaseModel):
    """The base of these answers: pydantic builds each one's validator and serializer on its
    first use (``defer_build``), so an app that includes a few route modules (the CLI's
    in-process API) builds only the answers those routes declare."""

    model_config = ConfigDict(defer_build=True)


class MqttHealthPublic(_Answer):
    """Where the broker listens, which one it is, and what the hub found it offers
    (hub/mqtt/features.py): ``ingest_shared`` says whether ingest uses ``$share``."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    url: str
    broker: str
    features: dict[str, Any] | None = None
    ingest_shared: bool | None = None


class HealthPublic(_Answer):
    """``/healthz``; ``hub serve`` adds where its broker and gRPC listen and each background
    service's ``health()`` (``services``: name -> facts, ``running`` among them)."""

    model_config = ConfigDict(extra="allow")

    status: str
    version: str
    database: str
    mqtt: MqttHealthPublic | None = None
    grpc: str | None = None
    grpc_artifacts: str | None = None
    services: dict[str, dict[str, Any]] | None = None


class DatasetImportPublic(DatasetVersionPublic):
    created: bool


class ValidationReportPublic(ValidationReport):
    text: str


class ModelSummaryPublic(_Answer):
    name: str
    description: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]


class AliasMovePublic(_Answer):
    alias: str
    from_version: int | None
    to_version: int | None
    at: datetime
    rollout_id: str = Field(description="the rollout whose promotion moved it ('' by hand)")
    verified: bool | None = Field(
        description="a rollout's promotion: whether its gates had the evidence it needed "
        "(false: promoted without it, by override); null: moved by hand"
    )
    evidence: dict[str, Any] = Field(
        description="a rollout's promotion: verified, gates (passed | failed | insufficient), "
        "required, missing, failed, labels_flow; {} by hand"
    )


class BundleRefPublic(_Answer):
    digest: str
    size: int
    formats: list[str]


class DatasetRefPublic(_Answer):
    ref: str
    digest: str


class LineagePublic(_Answer):
    model_version: ModelVersionPublic
    run: RunPublic | None
    dataset_version: DatasetRefPublic | None
    dataset_ancestry: list[str]
    code_version: str | None
    bundles: list[BundleRefPublic]


class ArtifactPublic(_Answer):
    name: str
    digest: str
    size: int


class EnrollmentTokenCreatedPublic(EnrollmentTokenPublic):
    token: str


class ApiTokenCreatedPublic(ApiTokenPublic):
    token: str


class EnrollmentPublic(_Answer):
    """MQTT credentials (the password is shown this once) and where to connect."""

    device_id: str
    mqtt_username: str
    mqtt_password: str
    hub_public_key: str
    mqtt_url: str
    artifact_endpoint: str
    created: bool
    rotated: bool


class DeviceRevokedPublic(_Answer):
    device_id: str
    revoked: bool


class CredentialStatusPublic(_Answer):
    """Whether the device holds a live broker login; the times only once it was enrolled."""

    device_id: str
    enrolled: bool
    issued_at: datetime | None = None
    rotations: int | None = None
    revoked_at: datetime | None = None


class DeviceKeyPublic(_Answer):
    key_id: str | None
    status: str
    online: bool


class KeysPublic(_Answer):
    key_id: str
    retired: list[str]
    devices: dict[str, DeviceKeyPublic]
    counts: dict[str, int]


class PublicKeyPublic(_Answer):
    """The current bundle-signing public key, for provisioning devices."""

    key_id: str
    pem: str


class KeyRotationPublic(_Answer):
    key_id: str
    retired_key_id: str
    public_key: str
    notifying_devices: bool


class IngestStatsPublic(_Answer):
    worker: dict[str, Any] | None
    devices: int
    missing: int
    dropped_windows: int
    streams: list[dict[str, Any]]


class MonitorLagPublic(_Answer):
    lag_s: float = Field(
        description="how far the monitor is behind ingest: age of the oldest telemetry row "
        "not evaluated yet (0: caught up)"
    )
    pending_rows: int = Field(description="telemetry rows not evaluated yet")
    last_cycle_s: float | None = Field(
        description="duration of this process's latest evaluation (None: none ran here)"
    )
    last_cycle_at: str | None = None
    cached: dict[str, int] = Field(
        default_factory=dict, description="versions, scoped detectors and open windows held"
    )


class MonitorStatusPublic(_Answer):
    versions: list[dict[str, Any]]
    open_alerts: int
    monitor: MonitorLagPublic


class EvaluationPublic(_Answer):
    at: str
    versions: list[str]
    rows: int
    labels: int
    windows: int
    scores: int
    alerts_opened: list[AlertPublic]
    alerts_resolved: list[AlertPublic]
    skipped: dict[str, int]
    errors: int
    seconds: float = Field(description="how long the evaluation took")


class PromotionEvidencePublic(_Answer):
    verified: bool
    gates: dict[str, str] = Field(description="gate -> passed | failed | insufficient")
    required: list[str] = Field(description="gates whose data the promotion needed")
    missing: list[str] = Field(description="required gates that had no data")
    failed: list[str]
    labels_flow: bool = Field(description="label feedback came from the rollout's devices")
    previous_versions: list[str] = Field(
        description="versions the rollout's devices ran before (none: a first deployment, "
        "nothing for the accuracy gate to compare with)"
    )


class PromotionPublic(_Answer):
    """What a completed rollout did with its ``promote_alias`` (docs/ROLLOUTS.md)."""

    alias: str
    version: str
    status: str = Field(description="verified | unverified | withheld | failed | none")
    promoted: bool
    verified: bool
    evidence: PromotionEvidencePublic
    override: str = Field(description="the operator's reason for an unverified promotion")
    detail: str
    at: str


class RolloutSummaryPublic(_Answer):
    id: str
    model: str
    version: str
    state: str
    phase: int
    selector: str
    reason: str
    created_at: str
    finished_at: str | None
    promotion: PromotionPublic | None = Field(description="null until the last phase passed")


class RolloutPublic(RolloutSummaryPublic):
    bundle_digest: str
    on_failure: str
    bake_s: float
    min_reporting: int
    device_timeout_s: float
    gate_config: dict[str, Any]
    promote_alias: str
    shadow: dict[str, Any] | None
    phases: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    device_states: dict[str, int]
    # devices waiting for a download slot, admission waits, slot refusals (views.queue_view)
    queue: dict[str, Any]
    events: list[dict[str, Any]]


class TrainOutcomePublic(_Answer):
    run_id: str
    model: str | None
    version: int | None
    metrics: dict[str, float]
    dataset_version: str
    code_version: str
    candidate: bool
    params: dict[str, Any]


class PackageOutcomePublic(_Answer):
    bundle: str
    digest: str
    size_bytes: int
    model: Any
    variants: list[dict[str, Any]]
    quantization: Any
    notes: list[str]


class TrainingPolicyPublic(_Answer):
    id: int
    model_name: str
    spec: str
    dataset: str
    params: dict[str, Any]
    enabled: bool
    schedule_interval_s: int | None
    on_new_data: bool
    on_new_code: bool
    debounce_s: int
    on_drift: bool
    on_degradation: bool
    field_data: bool
    min_field_records: int
    canary: dict[str, Any]
    handled_versions: list[str]
    last_dataset_version_id: int | None
    last_code_version: str | None
    last_run_at: datetime | None
    created_at: datetime


class PolicyListPublic(_Answer):
    policies: list[TrainingPolicyPublic]


class TriggerEventPublic(_Answer):
    id: int
    model_name: str
    kind: str
    reason: str
    at: datetime
    run_id: str | None
    status: str
    detail: str
    dataset_version_id: int | None
    code_version: str | None
    alert_ids: list[int]
    model_version: str | None
    bundle_digest: str | None
    rollout_id: str | None


class TriggerEventListPublic(_Answer):
    events: list[TriggerEventPublic]


class ReplicaPublic(_Answer):
    """One ``hub serve`` process on this database."""

    id: str
    host: str
    pid: int
    components: list[str]
    started_at: datetime
    heartbeat_at: datetime
    alive: bool = Field(description="a heartbeat within one lease period")


class LeasePublic(_Answer):
    """A singleton's lease and its holder."""

    name: str
    component: str = Field(description="the component whose replicas compete for it")
    holder: str
    holder_alive: bool
    term: int = Field(description="grows by one at each takeover")
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    valid: bool = Field(description="not expired")


class ClusterPublic(_Answer):
    """The replicas, the live ones per component, and the leases."""

    lease_s: float
    replicas: list[ReplicaPublic]
    components: dict[str, list[str]]
    leases: list[LeasePublic]
