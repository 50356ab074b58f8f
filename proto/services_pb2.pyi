from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CapacityRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class DownloadCapacity(_message.Message):
    __slots__ = ("capacity", "in_flight", "mean_stream_s", "served", "refused")
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MEAN_STREAM_S_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    capacity: int
    in_flight: int
    mean_stream_s: float
    served: int
    refused: int
    def __init__(self, capacity: _Optional[int] = ..., in_flight: _Optional[int] = ..., mean_stream_s: _Optional[float] = ..., served: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("digest", "offset", "chunk_size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    chunk_size: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "digest")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    digest: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class ArtifactInfo(_message.Message):
    __slots__ = ("digest", "size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("device_id", "enrollment_token", "capabilities", "tags", "client_csr")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CSR_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    enrollment_token: str
    capabilities: _containers.ScalarMap[str, str]
    tags: _containers.ScalarMap[str, str]
    client_csr: bytes
    def __init__(self, device_id: _Optional[str] = ..., enrollment_token: _Optional[str] = ..., capabilities: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Mapping[str, str]] = ..., client_csr: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "mqtt_username", "mqtt_password", "hub_public_key", "mqtt_url", "artifact_endpoint", "client_certificate", "client_ca")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MQTT_USERNAME_FIELD_NUMBER: _ClassVar[int]
    MQTT_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    HUB_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MQTT_URL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CA_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    mqtt_username: str
    mqtt_password: str
    hub_public_key: bytes
    mqtt_url: str
    artifact_endpoint: str
    client_certificate: bytes
    client_ca: bytes
    def __init__(self, device_id: _Optional[str] = ..., mqtt_username: _Optional[str] = ..., mqtt_password: _Optional[str] = ..., hub_public_key: _Optional[bytes] = ..., mqtt_url: _Optional[str] = ..., artifact_endpoint: _Optional[str] = ..., client_certificate: _Optional[bytes] = ..., client_ca: _Optional[bytes] = ...) -> None: ...
