"""Client certificates (mTLS, ``mqtt_client_certs``) against a real Mosquitto TLS listener.

A device enrols over gRPC with a CSR (its key stays on the device), gets a certificate
with CN = its id and publishes with it; the ACL still binds it to its own topics; a client
without a certificate, or with one from another CA, is refused; revocation refuses the
next connection (CRL) and leaves a connected device able to do nothing (ACL).
"""

from __future__ import annotations

import contextlib
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent._tls import new_client_key
from edge_agent.enroll import enroll
from edge_agent.settings import AgentSettings
from hub.core.artifacts import FileArtifactStore
from hub.core.db import session_scope
from hub.core.errors import InvalidInput
from hub.core.settings import HubSettings
from hub.core.tls import TlsFiles
from hub.mqtt.auth import hub_mqtt_url
from hub.mqtt.broker import EmbeddedBroker
from hub.mqtt.target import MqttTarget
from hub.rpc.devices import DeviceServicer
from hub.rpc.server import start_grpc_server
from hub.security.client_certs import DeviceCA
from hub.security.enrollment import create_enrollment_token
from hub.security.runtime import Security, device_endpoints
from hub.tables import EnrollmentTokenCreate
from proto.topics import Topics
from tests.security._secured import secured_broker

WAIT_S = 10.0  # an upper bound for things that normally take milliseconds, never a measurement
QUIET_S = 0.5  # how long "nothing arrives" is watched for


@dataclass
class MtlsHub:
    settings: HubSettings
    security: Security
    broker: EmbeddedBroker
    tls: TlsFiles
    grpc_target: str
    topics: Topics
    engine: Any

    def token(self) -> str:
        with session_scope(self.engine) as session:
            _row, token = create_enrollment_token(session, spec=EnrollmentTokenCreate(max_uses=10))
        return token


@pytest.fixture
def mtls_hub(tmp_path: Path) -> Iterator[MtlsHub]:
    with secured_broker(tmp_path, client_certs=True) as sb:
        settings, tls, engine, broker = sb.settings, sb.tls, sb.engine, sb.broker
        auth = sb.auth
        security = Security(
            settings=settings,
            engine=engine,
            broker_auth=auth,
            endpoints=lambda: device_endpoints(settings, mqtt_url=broker.url, grpc_port=0),
        )
        store = FileArtifactStore(root=tmp_path / "artifacts")
        server, port = start_grpc_server(
            store=store,
            host="127.0.0.1",
            port=0,
            devices=DeviceServicer(security=security),
            tls=tls,
        )
        try:
            yield MtlsHub(
                settings=settings,
                security=security,
                broker=broker,
                tls=tls,
                grpc_target=f"127.0.0.1:{port}",
                topics=Topics(prefix=settings.topic_prefix, fleet=settings.fleet),
                engine=engine,
            )
        finally:
            server.stop(None)
            security.close()


@dataclass
class Conn:
    paho: mqtt.Client
    inbox: queue.Queue[tuple[str, bytes]]
    granted: queue.Queue[list[Any]]
    gone: threading.Event

    def publish(self, topic: str, payload: bytes) -> None:
        self.paho.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def subscribe(self, topic: str) -> list[Any]:
        self.paho.subscribe(topic, qos=1)
        return self.granted.get(timeout=WAIT_S)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        self.paho.loop_stop()


def _connect(
    hub: MtlsHub,
    *,
    client_id: str,
    cert: tuple[Path, Path] | None,
    username: str | None = None,
    password: str | None = None,
) -> Conn:
    """A connected paho client over TLS (with ``cert`` = (cert, key) files), else raises."""
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if username:
        paho.username_pw_set(username, password)
    paho.tls_set(
        ca_certs=str(hub.tls.ca_file),
        certfile=str(cert[0]) if cert else None,
        keyfile=str(cert[1]) if cert else None,
    )
    conn = Conn(paho, queue.Queue(), queue.Queue(), threading.Event())
    codes: queue.Queue[Any] = queue.Queue()
    paho.on_connect = lambda _c, _u, _f, code, _p: codes.put(code)
    paho.on_message = lambda _c, _u, msg: conn.inbox.put((msg.topic, bytes(msg.payload)))
    paho.on_subscribe = lambda _c, _u, _mid, granted, _p: conn.granted.put(list(granted))

    def gone(*_a: object) -> None:  # (TLS 1.3: a refused certificate shows only after connect)
        conn.gone.set()
        codes.put(None)

    paho.on_disconnect = gone
    paho.connect("127.0.0.1", hub.broker.port, keepalive=30)  # TLS handshake errors raise here
    paho.loop_start()
    try:
        code = codes.get(timeout=WAIT_S)
    except queue.Empty:
        paho.loop_stop()
        raise ConnectionRefusedError("no CONNACK") from None
    if code is None or code.is_failure:
        paho.loop_stop()
        raise ConnectionRefusedError(str(code))
    return conn


def _refused(hub: MtlsHub, **kwargs: Any) -> None:
    with pytest.raises((ConnectionRefusedError, ssl.SSLError, OSError)):
        _connect(hub, **kwargs).close()


def _hub_conn(hub: MtlsHub) -> Conn:
    """The hub's own client as ``MqttTarget`` sets it up (its client certificate included)."""
    target = MqttTarget.from_url(hub_mqtt_url(hub.settings, broker_url=hub.broker.url))
    assert target.cert_file and target.key_file
    conn = _connect(
        hub,
        client_id=f"hub-{uuid.uuid4().hex[:6]}",
        cert=(Path(target.cert_file), Path(target.key_file)),
    )
    conn.subscribe(f"{hub.topics.base}/devices/#")
    return conn


def _enrol(hub: MtlsHub, device_id: str, agent_dir: Path) -> tuple[Path, Path]:
    done = enroll(
        grpc_target=hub.grpc_target,
        token=hub.token(),
        device_id=device_id,
        data_dir=agent_dir,
        ca_file=hub.tls.ca_file,
    )
    settings = AgentSettings(device_id=device_id, data_dir=agent_dir)
    assert settings.client_cert_file == done.client_cert_file
    assert settings.client_cert_file is not None and settings.client_key_file is not None
    return settings.client_cert_file, settings.client_key_file


def test_enrol_with_csr_gives_a_certificate_for_own_topics_only(
    mtls_hub: MtlsHub, tmp_path: Path
) -> None:
    agent_dir = tmp_path / "agent"
    cert_a = _enrol(mtls_hub, "dev-a", agent_dir)
    cert_b = _enrol(mtls_hub, "dev-b", agent_dir)
    for path in (*cert_a, agent_dir / "dev-a" / "enrollment.json"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    issued = x509.load_pem_x509_certificate(cert_a[0].read_bytes())
    assert issued.subject.rfc4514_string() == "CN=dev-a"
    ca = DeviceCA.for_data_dir(mtls_hub.settings.data_dir)
    assert issued.issuer == x509.load_pem_x509_certificate(ca.ca_pem).subject
    life = issued.not_valid_after_utc - issued.not_valid_before_utc
    assert abs(life.total_seconds() / 86400 - mtls_hub.settings.mqtt_client_cert_days) < 1
    # The private key was made on the device: nothing like it is in the hub's data dir.
    key_pem = cert_a[1].read_bytes()
    assert all(
        key_pem not in p.read_bytes() for p in mtls_hub.settings.data_dir.rglob("*") if p.is_file()
    )

    t = mtls_hub.topics
    hub = _hub_conn(mtls_hub)
    a = _connect(mtls_hub, client_id="dev-a", cert=cert_a)
    # (a username in CONNECT is ignored: the certificate's CN is the identity)
    b = _connect(mtls_hub, client_id="dev-b", cert=cert_b, username="dev-a", password="x")
    try:
        a.publish(t.telemetry("dev-a"), b"mine")
        assert hub.inbox.get(timeout=WAIT_S) == (t.telemetry("dev-a"), b"mine")
        b.publish(t.telemetry("dev-a"), b"forged")  # cert B on A's topic: the ACL drops it
        b.publish(t.telemetry("dev-b"), b"b's own")
        assert hub.inbox.get(timeout=WAIT_S) == (t.telemetry("dev-b"), b"b's own")
        # B cannot read A's commands (Mosquitto grants the subscription, delivers nothing);
        # A gets its own.
        b.subscribe(t.command("dev-a"))
        a.subscribe(t.command("dev-a"))
        hub.publish(t.command("dev-a"), b"cmd")
        assert a.inbox.get(timeout=WAIT_S) == (t.command("dev-a"), b"cmd")
        with pytest.raises(queue.Empty):
            b.inbox.get(timeout=QUIET_S)
    finally:
        for conn in (a, b, hub):
            conn.close()


def test_no_certificate_or_a_foreign_one_is_refused(mtls_hub: MtlsHub, tmp_path: Path) -> None:
    _enrol(mtls_hub, "dev-a", tmp_path / "agent")
    # A password login without a certificate: refused at the TLS handshake.
    _refused(mtls_hub, client_id="dev-a", cert=None, username="dev-a", password="anything")
    # A certificate for "dev-a" signed by another CA (here: self-made).
    other = DeviceCA(tmp_path / "other-ca")
    key_pem, csr = new_client_key("dev-a")
    forged = other.issue(csr, common_name="dev-a", days=1)
    (tmp_path / "forged.pem").write_bytes(forged.pem)
    (tmp_path / "forged.key").write_bytes(key_pem)
    _refused(mtls_hub, client_id="dev-a", cert=(tmp_path / "forged.pem", tmp_path / "forged.key"))
    # Enrolment without a CSR (e.g. the admin path) is refused in this mode.
    with pytest.raises(InvalidInput, match="client certificates only"):
        mtls_hub.security.enroll(device_id="dev-c", token=None)


def test_a_bad_csr_is_refused_at_enrolment(mtls_hub: MtlsHub) -> None:
    import grpc

    from proto import services_pb2, services_pb2_grpc

    channel = grpc.secure_channel(
        mtls_hub.grpc_target,
        grpc.ssl_channel_credentials(root_certificates=mtls_hub.tls.ca_file.read_bytes()),
    )
    with channel:
        stub = services_pb2_grpc.DeviceServiceStub(channel)
        _key, csr = new_client_key("dev-x")
        broken = csr.replace(csr[100:110], b"A" * 10)  # the signature no longer verifies
        for bad in (b"not a csr", broken):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Enroll(
                    services_pb2.EnrollRequest(
                        device_id="dev-x", enrollment_token=mtls_hub.token(), client_csr=bad
                    ),
                    timeout=WAIT_S,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_revoked_and_re_enrolled_certificates_are_cut_off(
    mtls_hub: MtlsHub, tmp_path: Path
) -> None:
    t = mtls_hub.topics
    agent_dir = tmp_path / "agent"
    cert_a = _enrol(mtls_hub, "dev-a", agent_dir)
    old_b = tmp_path / "old-b.pem", tmp_path / "old-b.key"
    cert_b = _enrol(mtls_hub, "dev-b", agent_dir)
    for src, dst in zip(cert_b, old_b, strict=True):
        dst.write_bytes(src.read_bytes())
    cert_b = _enrol(mtls_hub, "dev-b", agent_dir)  # re-enrolment: a new key and certificate
    cert_c = _enrol(mtls_hub, "dev-c", agent_dir)  # revoked after dev-a: the reload probe
    hub = _hub_conn(mtls_hub)
    a = _connect(mtls_hub, client_id="dev-a", cert=cert_a)
    try:
        a.subscribe(t.command("dev-a"))
        _connect(mtls_hub, client_id="dev-b", cert=cert_b).close()
        _refused(mtls_hub, client_id="dev-b", cert=old_b)  # the replaced certificate

        mtls_hub.security.revoke(device_id="dev-a")  # CRL + ACL rewritten, SIGHUP
        mtls_hub.security.revoke(device_id="dev-c")
        # Mosquitto handles the SIGHUP asynchronously: poll with dev-c's certificate until it
        # is refused (then the CRL that also lists dev-a's is loaded). Not with dev-a's own:
        # the broker names a certificate's connections after its CN, so a probe accepted
        # before the reload would take over (and close) the connection ``a`` under test.
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                _connect(mtls_hub, client_id="dev-c", cert=cert_c).close()
            except (ConnectionRefusedError, OSError):
                break
            assert time.monotonic() < deadline, "the revoked certificate is still accepted"
            time.sleep(0.05)  # polling for the reload, bounded by the deadline
        # A new connection with the revoked certificate fails the TLS handshake (CRL).
        _refused(mtls_hub, client_id="dev-a-2", cert=cert_a)
        # The connection still open can do nothing: its publishes and commands are dropped.
        a.publish(t.telemetry("dev-a"), b"after revocation")
        hub.publish(t.command("dev-a"), b"cmd after revocation")
        assert hub.inbox.get(timeout=WAIT_S) == (t.command("dev-a"), b"cmd after revocation")
        with pytest.raises(queue.Empty):
            hub.inbox.get(timeout=QUIET_S)
        with pytest.raises(queue.Empty):
            a.inbox.get(timeout=QUIET_S)
        # Other devices are untouched.
        b = _connect(mtls_hub, client_id="dev-b", cert=cert_b)
        b.publish(t.telemetry("dev-b"), b"still fine")
        assert hub.inbox.get(timeout=WAIT_S) == (t.telemetry("dev-b"), b"still fine")
        b.close()
    finally:
        a.close()
        hub.close()


def test_client_certs_need_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        HubSettings(data_dir=tmp_path, mqtt_client_certs=True)
