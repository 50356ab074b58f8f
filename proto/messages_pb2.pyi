from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlotStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SLOT_STATUS_UNSPECIFIED: _ClassVar[SlotStatus]
    SLOT_STATUS_EMPTY: _ClassVar[SlotStatus]
    SLOT_STATUS_DOWNLOADING: _ClassVar[SlotStatus]
    SLOT_STATUS_READY: _ClassVar[SlotStatus]
    SLOT_STATUS_PROBATION: _ClassVar[SlotStatus]
    SLOT_STATUS_SERVING: _ClassVar[SlotStatus]
    SLOT_STATUS_SHADOW: _ClassVar[SlotStatus]
    SLOT_STATUS_FAILED: _ClassVar[SlotStatus]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_RECEIVED: _ClassVar[EventKind]
    EVENT_KIND_DOWNLOADING: _ClassVar[EventKind]
    EVENT_KIND_DOWNLOADED: _ClassVar[EventKind]
    EVENT_KIND_VERIFIED: _ClassVar[EventKind]
    EVENT_KIND_ACTIVATED: _ClassVar[EventKind]
    EVENT_KIND_HEALTHY: _ClassVar[EventKind]
    EVENT_KIND_FAILED: _ClassVar[EventKind]
    EVENT_KIND_ROLLED_BACK: _ClassVar[EventKind]
SLOT_STATUS_UNSPECIFIED: SlotStatus
SLOT_STATUS_EMPTY: SlotStatus
SLOT_STATUS_DOWNLOADING: SlotStatus
SLOT_STATUS_READY: SlotStatus
SLOT_STATUS_PROBATION: SlotStatus
SLOT_STATUS_SERVING: SlotStatus
SLOT_STATUS_SHADOW: SlotStatus
SLOT_STATUS_FAILED: SlotStatus
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_RECEIVED: EventKind
EVENT_KIND_DOWNLOADING: EventKind
EVENT_KIND_DOWNLOADED: EventKind
EVENT_KIND_VERIFIED: EventKind
EVENT_KIND_ACTIVATED: EventKind
EVENT_KIND_HEALTHY: EventKind
EVENT_KIND_FAILED: EventKind
EVENT_KIND_ROLLED_BACK: EventKind

class Command(_message.Message):
    __slots__ = ("command_id", "device_id", "issued_at", "deploy", "rollback", "shadow", "config", "rotate_key")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ROTATE_KEY_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    device_id: str
    issued_at: int
    deploy: Deploy
    rollback: Rollback
    shadow: Shadow
    config: Config
    rotate_key: RotateKey
    def __init__(self, command_id: _Optional[str] = ..., device_id: _Optional[str] = ..., issued_at: _Optional[int] = ..., deploy: _Optional[_Union[Deploy, _Mapping]] = ..., rollback: _Optional[_Union[Rollback, _Mapping]] = ..., shadow: _Optional[_Union[Shadow, _Mapping]] = ..., config: _Optional[_Union[Config, _Mapping]] = ..., rotate_key: _Optional[_Union[RotateKey, _Mapping]] = ...) -> None: ...

class Deploy(_message.Message):
    __slots__ = ("rollout_id", "model", "version", "bundle_digest", "bundle_size", "artifact_endpoint", "probation_seconds", "bundle_url", "bundle_url_expires_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PROBATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_URL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    version: str
    bundle_digest: str
    bundle_size: int
    artifact_endpoint: str
    probation_seconds: int
    bundle_url: str
    bundle_url_expires_at: int
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., bundle_digest: _Optional[str] = ..., bundle_size: _Optional[int] = ..., artifact_endpoint: _Optional[str] = ..., probation_seconds: _Optional[int] = ..., bundle_url: _Optional[str] = ..., bundle_url_expires_at: _Optional[int] = ...) -> None: ...

class Rollback(_message.Message):
    __slots__ = ("rollout_id", "to_version", "reason")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    to_version: str
    reason: str
    def __init__(self, rollout_id: _Optional[str] = ..., to_version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Shadow(_message.Message):
    __slots__ = ("rollout_id", "model", "version", "bundle_digest", "bundle_size", "artifact_endpoint", "sample_fraction", "stop", "bundle_url", "bundle_url_expires_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_URL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: str
    version: str
    bundle_digest: str
    bundle_size: int
    artifact_endpoint: str
    sample_fraction: float
    stop: bool
    bundle_url: str
    bundle_url_expires_at: int
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., bundle_digest: _Optional[str] = ..., bundle_size: _Optional[int] = ..., artifact_endpoint: _Optional[str] = ..., sample_fraction: _Optional[float] = ..., stop: _Optional[bool] = ..., bundle_url: _Optional[str] = ..., bundle_url_expires_at: _Optional[int] = ...) -> None: ...

class Config(_message.Message):
    __slots__ = ("settings",)
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _containers.ScalarMap[str, str]
    def __init__(self, settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RotateKey(_message.Message):
    __slots__ = ("new_public_key", "new_key_id", "signer_key_id", "signature")
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NEW_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    new_public_key: bytes
    new_key_id: str
    signer_key_id: str
    signature: bytes
    def __init__(self, new_public_key: _Optional[bytes] = ..., new_key_id: _Optional[str] = ..., signer_key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SlotState(_message.Message):
    __slots__ = ("model", "version", "bundle_digest", "status")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    bundle_digest: str
    status: SlotStatus
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., bundle_digest: _Optional[str] = ..., status: _Optional[_Union[SlotStatus, str]] = ...) -> None: ...

class AgentState(_message.Message):
    __slots__ = ("device_id", "online", "agent_version", "active", "standby", "runtime", "free_disk_bytes", "updated_at", "last_command_id", "capabilities", "bundle_key_id")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    FREE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    online: bool
    agent_version: str
    active: SlotState
    standby: SlotState
    runtime: str
    free_disk_bytes: int
    updated_at: int
    last_command_id: str
    capabilities: _containers.ScalarMap[str, str]
    bundle_key_id: str
    def __init__(self, device_id: _Optional[str] = ..., online: _Optional[bool] = ..., agent_version: _Optional[str] = ..., active: _Optional[_Union[SlotState, _Mapping]] = ..., standby: _Optional[_Union[SlotState, _Mapping]] = ..., runtime: _Optional[str] = ..., free_disk_bytes: _Optional[int] = ..., updated_at: _Optional[int] = ..., last_command_id: _Optional[str] = ..., capabilities: _Optional[_Mapping[str, str]] = ..., bundle_key_id: _Optional[str] = ...) -> None: ...

class DeploymentEvent(_message.Message):
    __slots__ = ("event_id", "device_id", "command_id", "rollout_id", "kind", "progress", "reason", "model", "version", "at", "seq")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    device_id: str
    command_id: str
    rollout_id: str
    kind: EventKind
    progress: float
    reason: str
    model: str
    version: str
    at: int
    seq: int
    def __init__(self, event_id: _Optional[str] = ..., device_id: _Optional[str] = ..., command_id: _Optional[str] = ..., rollout_id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., progress: _Optional[float] = ..., reason: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., at: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("edges", "counts")
    EDGES_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedScalarFieldContainer[float]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, edges: _Optional[_Iterable[float]] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class FeatureSketch(_message.Message):
    __slots__ = ("name", "index", "counts", "min", "max", "sum", "sum_sq", "count", "non_finite")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    SUM_SQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    min: float
    max: float
    sum: float
    sum_sq: float
    count: int
    non_finite: int
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., sum: _Optional[float] = ..., sum_sq: _Optional[float] = ..., count: _Optional[int] = ..., non_finite: _Optional[int] = ...) -> None: ...

class ShadowStats(_message.Message):
    __slots__ = ("model", "version", "bundle_digest", "compared", "agreed", "latency_delta_ms", "errors")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    AGREED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_DELTA_MS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    bundle_digest: str
    compared: int
    agreed: int
    latency_delta_ms: float
    errors: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., bundle_digest: _Optional[str] = ..., compared: _Optional[int] = ..., agreed: _Optional[int] = ..., latency_delta_ms: _Optional[float] = ..., errors: _Optional[int] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("prediction_id", "values", "shape", "predicted_label", "at")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    shape: _containers.RepeatedScalarFieldContainer[int]
    predicted_label: int
    at: int
    def __init__(self, prediction_id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., shape: _Optional[_Iterable[int]] = ..., predicted_label: _Optional[int] = ..., at: _Optional[int] = ...) -> None: ...

class TelemetryWindow(_message.Message):
    __slots__ = ("device_id", "seq", "model", "version", "bundle_digest", "window_start", "window_end", "count", "errors", "latency", "output_counts", "confidence", "features", "shadow", "samples", "dropped_windows")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    seq: int
    model: str
    version: str
    bundle_digest: str
    window_start: int
    window_end: int
    count: int
    errors: int
    latency: Histogram
    output_counts: _containers.RepeatedScalarFieldContainer[int]
    confidence: Histogram
    features: _containers.RepeatedCompositeFieldContainer[FeatureSketch]
    shadow: ShadowStats
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    dropped_windows: int
    def __init__(self, device_id: _Optional[str] = ..., seq: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., bundle_digest: _Optional[str] = ..., window_start: _Optional[int] = ..., window_end: _Optional[int] = ..., count: _Optional[int] = ..., errors: _Optional[int] = ..., latency: _Optional[_Union[Histogram, _Mapping]] = ..., output_counts: _Optional[_Iterable[int]] = ..., confidence: _Optional[_Union[Histogram, _Mapping]] = ..., features: _Optional[_Iterable[_Union[FeatureSketch, _Mapping]]] = ..., shadow: _Optional[_Union[ShadowStats, _Mapping]] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., dropped_windows: _Optional[int] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("prediction_id", "label", "value", "at", "model", "version", "predicted_label", "predicted_value", "source")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    label: int
    value: float
    at: int
    model: str
    version: str
    predicted_label: int
    predicted_value: float
    source: str
    def __init__(self, prediction_id: _Optional[str] = ..., label: _Optional[int] = ..., value: _Optional[float] = ..., at: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., predicted_label: _Optional[int] = ..., predicted_value: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("device_id", "seq", "labels")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    seq: int
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, device_id: _Optional[str] = ..., seq: _Optional[int] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class SeqRange(_message.Message):
    __slots__ = ("stream", "first", "last")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    stream: str
    first: int
    last: int
    def __init__(self, stream: _Optional[str] = ..., first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class DeliveryAck(_message.Message):
    __slots__ = ("device_id", "ranges", "sent_at")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    ranges: _containers.RepeatedCompositeFieldContainer[SeqRange]
    sent_at: int
    def __init__(self, device_id: _Optional[str] = ..., ranges: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ..., sent_at: _Optional[int] = ...) -> None: ...
