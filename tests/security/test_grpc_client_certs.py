"""Bundle downloads with client certificates on (``hub.rpc.auth``), real gRPC on loopback.

The hub's gRPC server listens twice: the open port (TLS, no client certificate asked for)
serves enrolment and refuses artifact calls; the device port requires a certificate from
the hub's device CA, and each artifact call checks its serial is a live device
certificate. A device enrols without a certificate, downloads with the one it got; no
certificate, a foreign CA's, a revoked or a replaced one is refused. Without client
certificates nothing changes (``test_tls.py``, ``test_grpc_artifacts.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from edge_agent._fetch import DownloadError, download_bundle
from edge_agent._tls import channel_credentials, new_client_key
from edge_agent.enroll import Enrollment, enroll
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.settings import HubSettings
from hub.core.tls import TlsFiles, generate_self_signed
from hub.rpc.auth import DeviceCertAuth
from hub.rpc.devices import DeviceServicer
from hub.rpc.server import serve_grpc
from hub.security.client_certs import DeviceCA
from hub.security.enrollment import create_enrollment_token
from hub.security.runtime import Security, device_endpoints
from hub.tables import EnrollmentTokenCreate
from proto import services_pb2, services_pb2_grpc
from tests.security._secured import secured_broker

WAIT_S = 10.0  # an upper bound for things that normally take milliseconds, never a measurement
BLOB = bytes(range(256)) * 4096  # 1 MiB: several chunks


@dataclass
class CertHub:
    settings: HubSettings
    security: Security
    tls: TlsFiles
    open_target: str  # enrolment; artifact calls refused
    device_target: str  # requires a device certificate
    digest: str
    engine: object

    def enrol(self, device_id: str, agent_dir: Path) -> tuple[Enrollment, tuple[Path, Path]]:
        with session_scope(self.engine) as session:  # type: ignore[arg-type]
            _row, token = create_enrollment_token(session, spec=EnrollmentTokenCreate(max_uses=5))
        done = enroll(  # over the open port, without a client certificate
            grpc_target=self.open_target,
            token=token,
            device_id=device_id,
            data_dir=agent_dir,
            ca_file=self.tls.ca_file,
        )
        assert done.client_cert_file is not None
        return done, (done.client_cert_file, done.client_cert_file.with_name("client.key"))

    def download(
        self, dest: Path, *, target: str | None = None, cert: tuple[Path, Path] | None = None
    ) -> Path:
        return asyncio.run(
            download_bundle(
                endpoint=target or self.device_target,
                digest=self.digest,
                dest_dir=dest,
                ca_file=self.tls.ca_file,
                client_cert=cert,
                retries=0,
                timeout_s=WAIT_S,
            )
        )

    def stat(self, target: str, cert: tuple[Path, Path] | None) -> grpc.StatusCode:
        """The status of a raw ``Stat`` call (OK when it answers)."""
        key = None if cert is None else cert[1]
        creds = channel_credentials(
            self.tls.ca_file, client_cert=None if cert is None else cert[0], client_key=key
        )
        with grpc.secure_channel(target, creds) as channel:
            stub = services_pb2_grpc.ArtifactServiceStub(channel)
            try:
                stub.Stat(services_pb2.StatRequest(digest=self.digest), timeout=WAIT_S)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK


@pytest.fixture
def cert_hub(tmp_path: Path) -> Iterator[CertHub]:
    with secured_broker(tmp_path, client_certs=True) as sb:
        settings, tls, engine, broker = sb.settings, sb.tls, sb.engine, sb.broker
        auth = sb.auth
        ports: list[int] = []
        security = Security(
            settings=settings,
            engine=engine,
            broker_auth=auth,
            endpoints=lambda: device_endpoints(settings, mqtt_url=broker.url, grpc_port=ports[0]),
        )
        store = FileArtifactStore(root=tmp_path / "artifacts")
        digest = store.put_bytes(BLOB).digest
        assert digest == "sha256:" + hashlib.sha256(BLOB).hexdigest()
        rpc = serve_grpc(
            store=store,
            host="127.0.0.1",
            port=0,
            devices=DeviceServicer(security=security),
            tls=tls,
            device_certs=DeviceCertAuth(
                ca_file=DeviceCA.for_data_dir(settings.data_dir).ca_file, engine=engine
            ),
        )
        assert rpc.mtls_port is not None and rpc.artifact_port == rpc.mtls_port != rpc.port
        ports.append(rpc.artifact_port)
        try:
            yield CertHub(
                settings=settings,
                security=security,
                tls=tls,
                open_target=f"127.0.0.1:{rpc.port}",
                device_target=f"127.0.0.1:{rpc.mtls_port}",
                digest=digest,
                engine=engine,
            )
        finally:
            rpc.server.stop(None)
            security.close()


def test_enrolled_device_downloads_with_its_certificate(cert_hub: CertHub, tmp_path: Path) -> None:
    done, cert = cert_hub.enrol("dev-a", tmp_path / "agent")  # enrolment: no certificate
    assert done.artifact_endpoint == cert_hub.device_target  # the port that requires one
    path = cert_hub.download(tmp_path / "dl", cert=cert)
    assert path.read_bytes() == BLOB
    assert cert_hub.stat(cert_hub.device_target, cert) == grpc.StatusCode.OK


def test_no_certificate_is_refused(cert_hub: CertHub, tmp_path: Path) -> None:
    _done, cert = cert_hub.enrol("dev-a", tmp_path / "agent")
    # The open port: the call arrives and is refused with a message naming the way out.
    with pytest.raises(DownloadError, match="client certificate") as refused:
        cert_hub.download(tmp_path / "dl", target=cert_hub.open_target)
    assert refused.value.reason == "unauthenticated"
    assert "UNAUTHENTICATED" in str(refused.value)
    assert cert_hub.stat(cert_hub.open_target, None) == grpc.StatusCode.UNAUTHENTICATED
    # ... also with a valid certificate: the open port does not ask for one.
    assert cert_hub.stat(cert_hub.open_target, cert) == grpc.StatusCode.UNAUTHENTICATED
    # The device port: no TLS session without a certificate.
    assert cert_hub.stat(cert_hub.device_target, None) == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(DownloadError):
        cert_hub.download(tmp_path / "dl", cert=None)
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").glob("*.bundle"))


def test_a_foreign_ca_certificate_is_refused(cert_hub: CertHub, tmp_path: Path) -> None:
    cert_hub.enrol("dev-a", tmp_path / "agent")
    # "dev-a" signed by another CA (self-made), and the hub's *server* CA: neither is the
    # device CA.
    other = DeviceCA(tmp_path / "other-ca")
    key_pem, csr = new_client_key("dev-a")
    forged = other.issue(csr, common_name="dev-a", days=1)
    (tmp_path / "forged.pem").write_bytes(forged.pem)
    (tmp_path / "forged.key").write_bytes(key_pem)
    cert = (tmp_path / "forged.pem", tmp_path / "forged.key")
    assert cert_hub.stat(cert_hub.device_target, cert) == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(DownloadError):
        cert_hub.download(tmp_path / "dl", cert=cert)
    server_ca = generate_self_signed(tmp_path / "server-ca")  # a server cert, its own CA
    server_cert = (server_ca.cert_file, server_ca.key_file)
    assert cert_hub.stat(cert_hub.device_target, server_cert) == grpc.StatusCode.UNAVAILABLE


def test_revoked_and_replaced_certificates_are_refused(cert_hub: CertHub, tmp_path: Path) -> None:
    _a, cert_a = cert_hub.enrol("dev-a", tmp_path / "a")
    _b, first_b = cert_hub.enrol("dev-b", tmp_path / "b1")
    _b, cert_b = cert_hub.enrol("dev-b", tmp_path / "b2")  # re-enrolment: a new certificate
    assert cert_hub.download(tmp_path / "dl-a", cert=cert_a).read_bytes() == BLOB
    # The replaced certificate still passes TLS (the device CA signed it) but is revoked.
    with pytest.raises(DownloadError, match="revoked") as refused:
        cert_hub.download(tmp_path / "dl-b1", cert=first_b)
    assert refused.value.reason == "permission_denied"
    assert cert_hub.download(tmp_path / "dl-b2", cert=cert_b).read_bytes() == BLOB

    cert_hub.security.revoke(device_id="dev-a")
    with pytest.raises(DownloadError, match="revoked"):
        cert_hub.download(tmp_path / "dl-a2", cert=cert_a)
    assert cert_hub.stat(cert_hub.device_target, cert_a) == grpc.StatusCode.PERMISSION_DENIED
    assert cert_hub.stat(cert_hub.device_target, cert_b) == grpc.StatusCode.OK  # untouched


def test_a_device_ca_certificate_not_issued_to_a_device_is_refused(
    cert_hub: CertHub, tmp_path: Path
) -> None:
    # The hub's own MQTT client certificate comes from the device CA but names no device.
    ca = DeviceCA.for_data_dir(cert_hub.settings.data_dir)
    hub_cert = ca.hub_certificate("edgeloop-hub")
    assert cert_hub.stat(cert_hub.device_target, hub_cert) == grpc.StatusCode.PERMISSION_DENIED


def test_without_client_certificates_nothing_changes(tmp_path: Path) -> None:
    """No device certificates: one port, downloads as before (a presented cert is ignored)."""
    tls = generate_self_signed(tmp_path / "tls")
    store = FileArtifactStore(root=tmp_path / "artifacts")
    digest = store.put_bytes(BLOB).digest
    rpc = serve_grpc(store=store, host="127.0.0.1", port=0, tls=tls)
    try:
        assert rpc.mtls_port is None and rpc.artifact_port == rpc.port
        ca = DeviceCA(tmp_path / "clients")
        key_pem, csr = new_client_key("dev-a")
        (tmp_path / "c.pem").write_bytes(ca.issue(csr, common_name="dev-a", days=1).pem)
        (tmp_path / "c.key").write_bytes(key_pem)
        for n, cert in enumerate((None, (tmp_path / "c.pem", tmp_path / "c.key"))):
            path = asyncio.run(
                download_bundle(
                    endpoint=f"127.0.0.1:{rpc.port}",
                    digest=digest,
                    dest_dir=tmp_path / f"dl{n}",
                    ca_file=tls.ca_file,
                    client_cert=cert,
                    retries=0,
                    timeout_s=WAIT_S,
                )
            )
            assert path.read_bytes() == BLOB
    finally:
        rpc.server.stop(None)


def test_device_certificates_need_tls(tmp_path: Path) -> None:
    store = FileArtifactStore(root=tmp_path / "artifacts")
    auth = DeviceCertAuth(ca_file=tmp_path / "ca.pem", engine=make_engine("sqlite://"))
    with pytest.raises(ValueError, match="need TLS"):
        serve_grpc(store=store, host="127.0.0.1", port=0, device_certs=auth)
