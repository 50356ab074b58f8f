"""The hub's one settings class: environment variables prefixed ``EDGELOOP_``, failing fast.

Defaults are the embedded ones: a SQLite file and an artifact folder under the data dir,
and a broker the hub starts itself when no ``mqtt_url`` is given.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hub.core.errors import EdgeloopError
from hub.core.redact import redact_url

if TYPE_CHECKING:
    from hub.core.tls import TlsFiles

DEFAULT_DATA_DIR = Path("~/.edgeloop")
MIN_TOKEN_LENGTH = 32
TOKEN_FILE = "admin_token"


class SettingsError(EdgeloopError, ValueError):
    """Settings that are missing or unsafe; the message says what to set."""


class HubSettings(BaseSettings):
    """Configuration of one hub process."""

    # hide_input_in_errors: a validation error would otherwise quote the input (the whole
    # settings dict for a model-level check: the admin token, URLs with passwords)
    model_config = SettingsConfigDict(
        env_prefix="EDGELOOP_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    mode: Literal["dev", "production"] = "dev"
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = Field(
        default=None, description="sqlite:///FILE or postgresql://...; default: SQLite in data_dir"
    )
    artifact_url: str | None = Field(
        default=None,
        description="file:///DIR or s3://BUCKET/PREFIX?endpoint_url=..&region=.. (both "
        "content-addressed; S3 credentials from the AWS_* variables); default: data_dir/artifacts",
    )
    artifact_presign: bool = Field(
        default=False,
        description="s3:// store: deploy commands carry a presigned download URL, so devices "
        "fetch bundles from the object store (gRPC stays the fallback)",
    )
    artifact_presign_ttl_s: int = Field(
        default=900,
        ge=60,
        le=7 * 24 * 3600,
        description="how long a presigned download URL works, seconds",
    )
    mqtt_url: str | None = Field(
        default=None, description="mqtt://host:port of an external broker; unset: embedded broker"
    )
    mqtt_broker: Literal[
        "auto", "mosquitto", "nats", "rabbitmq", "emqx", "hivemq", "vernemq", "amqtt"
    ] = Field(
        default="auto",
        description="the external broker (mqtt_url) is this one: the hub uses $share ingest "
        "only where it has MQTT 5 and shared subscriptions (hub/mqtt/features.py, "
        "docs/BROKERS.md); auto: asks the broker when ingest_shared is on",
    )
    embedded_broker: Literal["auto", "mosquitto", "amqtt"] = "auto"
    embedded_mqtt_port: int = Field(default=1884, ge=0, le=65535)
    embedded_mqtt_internal_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="embedded Mosquitto with logins: the hub's own listener on 127.0.0.1 "
        "(0: a free one); the device port binds client id to login (hub/mqtt/broker.py)",
    )
    broker_auth: bool = Field(
        default=True,
        description="embedded broker: per-device logins + ACL (hub/mqtt/auth.py); off: anonymous",
    )
    device_mqtt_url: str | None = Field(
        default=None, description="broker address given to enrolling devices; default: the hub's"
    )
    device_grpc_endpoint: str | None = Field(
        default=None, description="host:port of ArtifactService given to enrolling devices"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="TLS for the embedded broker and gRPC: server certificate (PEM)"
    )
    tls_key_file: Path | None = Field(default=None, description="its private key (PEM)")
    tls_ca_file: Path | None = Field(
        default=None, description="the CA devices verify the hub with; default: tls_cert_file"
    )
    tls_self_signed: bool = Field(
        default=False, description="TLS with a CA + certificate generated into data_dir/tls"
    )
    mqtt_client_certs: bool = Field(
        default=False,
        description="embedded broker: devices log in with a client certificate (CN = device id) "
        "from the hub's device CA instead of a password; needs TLS (hub/security/client_certs.py)",
    )
    mqtt_client_cert_days: float = Field(
        default=90, gt=0, description="validity of device client certificates (re-enrol to renew)"
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    grpc_mtls_port: int = Field(
        default=50052,
        ge=0,
        le=65535,
        description="with mqtt_client_certs: the gRPC port that requires a device client "
        "certificate; bundle downloads go there, grpc_port stays open for enrolment",
    )
    fleet: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$")
    topic_prefix: str = "edgeloop/v1"
    admin_token: SecretStr | None = None
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    trigger_interval_s: float = Field(
        default=60.0, ge=0, description="how often the hub evaluates training policies; 0: off"
    )
    rollout_tick_s: float = Field(
        default=0.5, ge=0, description="rollout controller reconcile interval; 0: no controller"
    )
    rollout_max_commands_per_s: float = Field(default=50.0, gt=0)
    rollout_max_concurrent_downloads: int = Field(default=100, gt=0)
    monitor_interval_s: float = Field(
        default=10.0, ge=0, description="how often the hub evaluates drift/degradation; 0: off"
    )
    monitor_window_size: int = Field(default=200, gt=0, description="predictions per window")
    monitor_false_alarms_per_day: float = Field(
        default=1.0,
        gt=0,
        description="the fleet-wide false-alarm budget: expected false drift (and accuracy) "
        "alerts per model version per day, over all devices, groups and detectors",
    )
    monitor_false_alarm_rate: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="instead of the budget: a fixed rate per scope and window over all drift "
        "detectors (the fleet-wide count then grows with the number of scopes)",
    )
    monitor_accuracy_margin: float = Field(
        default=0.05, ge=0, lt=1, description="degradation: live accuracy this far below eval"
    )
    monitor_min_labels: int = Field(default=50, gt=0, description="labels before accuracy tests")
    components: str = Field(
        default="all",
        description="what this `hub serve` process runs, comma-separated: api, grpc, ingest, "
        "monitor, controller, triggers (or all); several processes on one database split "
        "the work (docs/ARCHITECTURE.md, Several hub replicas)",
    )
    replica_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="this replica's name among several on one database (unique per process; "
        "also names its MQTT sessions); unset: host-pid-random",
    )
    cluster_lease_s: float = Field(
        default=10.0,
        gt=0,
        description="lease period of singleton work (rollout controller, triggers, retention, "
        "key rotation) among replicas: a standby takes over at most this long after its "
        "holder stops renewing (on PostgreSQL within a third of it when the holder dies)",
    )
    ingest_batch_size: int = Field(default=1000, gt=0, description="messages per ingest commit")
    ingest_shared: bool = Field(
        default=False,
        description="subscribe through $share/hub/... so several ingest workers split the load. "
        "Off by default: Mosquitto 2.0.11 queues nothing for an offline shared subscription, so "
        "windows sent while the hub reconnects after a broker restart are lost "
        "(tests/faults/README.md); a plain persistent subscription gets them all",
    )
    ingest_batch_interval_s: float = Field(
        default=0.2, gt=0, description="commit a partial ingest batch after this long"
    )
    ingest_max_payload_bytes: int = Field(default=1_048_576, gt=0)
    ingest_accept_unknown_devices: bool = Field(
        default=False, description="store messages from devices not in the registry"
    )
    ingest_ack_interval_s: float = Field(
        default=0.5,
        ge=0,
        description="DeliveryAck to each device at most this often (agents with "
        "delivery=hub_ack keep data until acked); 0: no acks",
    )
    ingest_decode_process: bool = Field(
        default=False,
        description="decode and store ingested messages in a child process, so receiving and "
        "storing run on two cores (same guarantees; not with in-memory SQLite)",
    )
    telemetry_retention_s: float = Field(
        default=7 * 24 * 3600.0, ge=0, description="raw telemetry windows kept; 0: forever"
    )
    feedback_retention_s: float = Field(
        default=30 * 24 * 3600.0,
        ge=0,
        description="feedback labels and field samples kept (labels roll up per version and "
        "hour; the newest 20,000 labelled samples per model stay for retraining); 0: forever",
    )
    monitor_score_retention_s: float = Field(
        default=14 * 24 * 3600.0,
        ge=0,
        description="monitor scores kept (rolled up per series and hour; each series' newest "
        "stays); 0: forever",
    )
    event_retention_s: float = Field(
        default=90 * 24 * 3600.0,
        ge=0,
        description="resolved alerts, deployment events, finished rollouts' events and "
        "finished trigger events kept; 0: forever",
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = urlparse(value).scheme.split("+")[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise SettingsError(
                f"EDGELOOP_DATABASE_URL scheme {scheme!r} is not supported; "
                "use sqlite:///path/to/hub.core.db or postgresql://user@host/dbname"
            )
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in {"mqtt", "mqtts", "tcp"} or not parsed.hostname:
            raise SettingsError(
                f"EDGELOOP_MQTT_URL {redact_url(value)!r} is not a broker address; "
                "use mqtt://host:1883 (a login goes before the host: user:password@host)"
            )
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> HubSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError("TLS needs both EDGELOOP_TLS_CERT_FILE and EDGELOOP_TLS_KEY_FILE")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_ca_file):
            if path is not None and not path.is_file():
                raise SettingsError(f"TLS file {path} does not exist")
        if self.mqtt_client_certs and not (self.tls_cert_file or self.tls_self_signed):
            raise SettingsError(
                "EDGELOOP_MQTT_CLIENT_CERTS needs TLS: set EDGELOOP_TLS_SELF_SIGNED=1 or "
                "EDGELOOP_TLS_CERT_FILE + EDGELOOP_TLS_KEY_FILE"
            )
        return self

    @model_validator(mode="after")
    def _presign_needs_s3(self) -> HubSettings:
        if self.artifact_presign and not (self.artifact_url or "").startswith("s3://"):
            raise SettingsError(
                "EDGELOOP_ARTIFACT_PRESIGN needs an object store: set EDGELOOP_ARTIFACT_URL="
                "s3://BUCKET/PREFIX (devices then download from it; gRPC stays the fallback)"
            )
        return self

    @model_validator(mode="after")
    def _production_is_safe(self) -> HubSettings:
        if self.mode != "production":
            return self
        token = self.admin_token.get_secret_value() if self.admin_token else ""
        if len(token) < MIN_TOKEN_LENGTH:
            raise SettingsError(
                "production mode needs EDGELOOP_ADMIN_TOKEN of at least "
                f"{MIN_TOKEN_LENGTH} characters (try: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        if self.database_url is None:
            raise SettingsError(
                "production mode needs an explicit EDGELOOP_DATABASE_URL (e.g. postgresql://...)"
            )
        return self

    # Derived values -------------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.db'}"

    @property
    def resolved_artifact_url(self) -> str:
        return self.artifact_url or (self.data_dir / "artifacts").as_uri()

    def tls_files(self) -> TlsFiles | None:
        """The broker's and gRPC server's certificate files; None: plaintext (the default)."""
        from hub.core.tls import TlsFiles, generate_self_signed

        if self.tls_cert_file is not None and self.tls_key_file is not None:
            ca = self.tls_ca_file or self.tls_cert_file
            return TlsFiles(cert_file=self.tls_cert_file, key_file=self.tls_key_file, ca_file=ca)
        if self.tls_self_signed:
            return generate_self_signed(self.data_dir / "tls")
        return None

    def resolved_admin_token(self) -> str:
        """The admin token; in dev mode one is generated once and kept in the data dir (0600)."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        path = self.data_dir / TOKEN_FILE
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        return token


def load_settings(**overrides: object) -> HubSettings:
    """Build settings from the environment plus explicit overrides (None values are ignored)."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    return HubSettings(**clean)  # type: ignore[arg-type]
