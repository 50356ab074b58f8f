"""The agent's one settings class: environment variables prefixed ``EDGELOOP_AGENT_``.

Fails fast on what would make a device unsafe or unreachable: no hub public key (it could
never verify a bundle), a device id that is not MQTT-safe, a broker URL that is not one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge_agent.errors import AgentSettingsError
from edge_agent.paths import DEFAULT_DATA_DIR, ENROLLMENT_FILE

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_PREFER",
    "ENROLLMENT_FILE",
    "AgentSettings",
    "AgentSettingsError",
    "shown_url",
]

DEFAULT_PREFER = ("onnx:int8", "onnx:fp32", "tflite:int8", "tflite:fp32")


class AgentSettings(BaseSettings):
    # no input in validation errors: a model-level error would quote every setting given
    model_config = SettingsConfigDict(
        env_prefix="EDGELOOP_AGENT_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
    data_dir: Path = DEFAULT_DATA_DIR
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_protocol: Literal["3.1.1", "5"] = "3.1.1"
    ca_file: Path | None = Field(
        default=None,
        description="the hub's CA certificate: TLS for mqtts:// and for gRPC (downloads)",
    )
    client_cert_file: Path | None = Field(
        default=None, description="MQTT client certificate (PEM) when the hub requires one"
    )
    client_key_file: Path | None = Field(default=None, description="its private key (PEM)")
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    fleet: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    topic_prefix: str = "edgeloop/v1"
    public_key: Path | None = Field(
        default=None, description="the hub's bundle signing public key (raw, hex or PEM file)"
    )
    prefer: tuple[str, ...] = DEFAULT_PREFER
    threads: int = Field(default=1, ge=1)
    telemetry_window_s: float = Field(default=60.0, gt=0)
    telemetry_max_predictions: int = Field(default=1000, ge=1)
    telemetry_tick_s: float = Field(
        default=1.0, gt=0, description="how often predictions are aggregated into the window"
    )
    reservoir_size: int = Field(default=0, ge=0, description="raw samples per window; 0 = off")
    probation_s: float = Field(default=30.0, ge=0)
    probation_max_error_rate: float = Field(default=0.05, ge=0, le=1)
    queue_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    delivery: Literal["broker_ack", "hub_ack"] = Field(
        default="broker_ack",
        description="when a queued telemetry/feedback item may go: at the broker's PUBACK, or "
        "when the hub's DeliveryAck covers it (needs a hub that acks; enrolment sets hub_ack)",
    )
    hub_ack_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="hub_ack: the least time an item waits for the hub's ack before it is "
        "sent again (the timeout adapts to the hub's measured ack latency above it)",
    )
    hub_ack_max_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="hub_ack: the most the adaptive timeout grows to (while the hub is behind)",
    )
    http_port: int | None = Field(default=None, ge=0, le=65535, description="None: no local API")
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    keepalive_s: int = Field(default=30, ge=5)
    capabilities: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_enrollment(cls, data: Any) -> Any:
        """Fill what ``edgeloop agent enroll`` stored (login, broker, key) unless given."""
        if not isinstance(data, dict) or not data.get("device_id"):
            return data
        folder = Path(data.get("data_dir") or cls.model_fields["data_dir"].default)
        path = folder.expanduser().resolve() / str(data["device_id"]) / ENROLLMENT_FILE
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return data
        if not isinstance(stored, dict):
            return data
        keys = (
            "mqtt_url",
            "mqtt_username",
            "mqtt_password",
            "public_key",
            "ca_file",
            "client_cert_file",
            "client_key_file",
            "delivery",
        )
        return {**{k: stored[k] for k in keys if stored.get(k)}, **data}

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in {"mqtt", "tcp", "mqtts", "ssl"} or not parsed.hostname:
            raise AgentSettingsError(
                f"EDGELOOP_AGENT_MQTT_URL {value!r} is not a broker address; use "
                "mqtt://host:1883 or mqtts://host:8883 (with EDGELOOP_AGENT_CA_FILE)"
            )
        return value

    @model_validator(mode="after")
    def _can_verify(self) -> AgentSettings:
        if self.public_key is None:
            raise AgentSettingsError(
                "the agent needs the hub's bundle public key to verify bundles: set "
                "EDGELOOP_AGENT_PUBLIC_KEY (or --public-key) to the key file the hub gave you"
            )
        if not self.public_key.exists():
            raise AgentSettingsError(f"public key file {self.public_key} does not exist")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise AgentSettingsError(f"CA file {self.ca_file} (EDGELOOP_AGENT_CA_FILE) not found")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise AgentSettingsError(
                "a client certificate needs both EDGELOOP_AGENT_CLIENT_CERT_FILE and "
                "EDGELOOP_AGENT_CLIENT_KEY_FILE"
            )
        for path in (self.client_cert_file, self.client_key_file):
            if path is not None and not path.is_file():
                raise AgentSettingsError(f"client certificate file {path} not found")
        return self

    @property
    def mqtt_host(self) -> str:
        return urlparse(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        parsed = urlparse(self.mqtt_url)
        return parsed.port or (8883 if parsed.scheme in {"mqtts", "ssl"} else 1883)

    @property
    def device_dir(self) -> Path:
        return self.data_dir / self.device_id


def shown_url(url: str) -> str:
    """A broker URL as it may be shown: without a ``user:password@`` part."""
    parsed = urlparse(url)
    if "@" not in parsed.netloc:
        return url
    return parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]).geturl()
