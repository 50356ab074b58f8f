"""Enrol a device with its hub: ``DeviceService.Enroll`` over gRPC, results kept on disk.

``enroll()`` trades an enrolment token for the device's MQTT login, the hub's bundle
public key and the endpoints, and writes them into the agent's folder for that device
(``<data dir>/<device id>/``): ``enrollment.json`` and ``hub.pub`` (hex), both 0600.
The device also makes its own private key and sends a CSR; when the hub requires client
certificates (mTLS) it returns a certificate, kept with the key as ``client.pem`` +
``client.key`` (0600, the key never leaves the device), else the key is discarded.
:class:`~edge_agent.settings.AgentSettings` reads them when present, so ``agent run``
needs only ``--device-id`` afterwards. Light on purpose: grpc and the generated stubs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from edge_agent._tls import new_client_key, sync_channel
from edge_agent.errors import EnrollError
from edge_agent.settings import ENROLLMENT_FILE
from model_packager.files import write_private
from proto import services_pb2, services_pb2_grpc

__all__ = [
    "CLIENT_CA_FILE",
    "CLIENT_CERT_FILE",
    "CLIENT_KEY_FILE",
    "ENROLLMENT_FILE",
    "PUBLIC_KEY_FILE",
    "EnrollError",
    "Enrollment",
    "enroll",
    "stored_enrollment",
]

PUBLIC_KEY_FILE = "hub.pub"
CLIENT_CERT_FILE, CLIENT_KEY_FILE, CLIENT_CA_FILE = "client.pem", "client.key", "client-ca.pem"


@dataclass(frozen=True, kw_only=True)
class Enrollment:
    device_id: str
    mqtt_username: str
    mqtt_password: str = field(repr=False)
    mqtt_url: str
    artifact_endpoint: str
    public_key_file: Path
    enrollment_file: Path
    client_cert_file: Path | None = None

    def summary(self) -> dict[str, Any]:
        """What may be printed: everything but the password."""
        return {
            "device_id": self.device_id,
            "mqtt_username": self.mqtt_username,
            "mqtt_url": self.mqtt_url,
            "artifact_endpoint": self.artifact_endpoint,
            "public_key": str(self.public_key_file),
            "enrollment_file": str(self.enrollment_file),
            "client_certificate": str(self.client_cert_file) if self.client_cert_file else None,
        }


def enroll(
    *,
    grpc_target: str,
    token: str,
    device_id: str,
    data_dir: Path,
    capabilities: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    ca_file: Path | None = None,
) -> Enrollment:
    """Call ``DeviceService.Enroll`` on ``grpc_target`` (host:port) and store the result.

    ``ca_file`` (the hub's CA certificate): enrol over TLS, verifying the hub, and keep
    the path in ``enrollment.json`` so that ``agent run`` uses TLS too.
    """
    client_key, client_csr = new_client_key(device_id)
    request = services_pb2.EnrollRequest(
        device_id=device_id,
        enrollment_token=token,
        capabilities=capabilities or {},
        tags=tags or {},
        client_csr=client_csr,
    )
    ca_path = Path(ca_file).expanduser().resolve() if ca_file is not None else None
    with sync_channel(grpc_target, ca_file=ca_path) as channel:
        stub = services_pb2_grpc.DeviceServiceStub(channel)
        try:
            reply: services_pb2.EnrollResponse = stub.Enroll(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            status = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise EnrollError(
                f"enrolment at {grpc_target} failed: {details}", code=status.name.lower()
            ) from None
    folder = Path(data_dir).expanduser().resolve() / reply.device_id
    key_file = folder / PUBLIC_KEY_FILE
    write_private(key_file, reply.hub_public_key.hex() + "\n")
    cert_file = key_path = None
    if reply.client_certificate:  # the hub wants mTLS: keep our key and its certificate
        cert_file, key_path = folder / CLIENT_CERT_FILE, folder / CLIENT_KEY_FILE
        write_private(key_path, client_key.decode())
        write_private(cert_file, reply.client_certificate.decode())
        write_private(folder / CLIENT_CA_FILE, reply.client_ca.decode())
    record = {
        "device_id": reply.device_id,
        "mqtt_username": reply.mqtt_username,
        "mqtt_password": reply.mqtt_password,
        "mqtt_url": reply.mqtt_url,
        "artifact_endpoint": reply.artifact_endpoint,
        "public_key": str(key_file),
        "ca_file": str(ca_path) if ca_path is not None else None,
        "delivery": "hub_ack",  # an enrolling hub acks what it stores (docs/PROTOCOL.md)
        "client_cert_file": str(cert_file) if cert_file else None,
        "client_key_file": str(key_path) if key_path else None,
    }
    enrollment_file = folder / ENROLLMENT_FILE
    write_private(enrollment_file, json.dumps(record, indent=2) + "\n")
    return Enrollment(
        device_id=reply.device_id,
        mqtt_username=reply.mqtt_username,
        mqtt_password=reply.mqtt_password,
        mqtt_url=reply.mqtt_url,
        artifact_endpoint=reply.artifact_endpoint,
        public_key_file=key_file,
        enrollment_file=enrollment_file,
        client_cert_file=cert_file,
    )


def stored_enrollment(data_dir: Path, device_id: str) -> dict[str, Any] | None:
    """What ``enroll()`` wrote for ``device_id`` under ``data_dir``, or None."""
    path = Path(data_dir).expanduser().resolve() / device_id / ENROLLMENT_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
