"""Enrolment over real gRPC on loopback, and the token rules on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from edge_agent.enroll import EnrollError, enroll
from edge_agent.settings import AgentSettings
from hub.core.artifacts import FileArtifactStore
from hub.core.clock import utcnow
from hub.core.db import make_engine, session_scope
from hub.core.errors import InvalidInput, Unauthorized
from hub.rpc.devices import DeviceServicer
from hub.rpc.server import start_grpc_server
from hub.security.enrollment import (
    DeviceEndpoints,
    EnrollmentRefused,
    create_enrollment_token,
    enroll_device,
)
from hub.security.keys import bundle_public_key
from hub.tables import Device, DeviceCredential, EnrollmentToken, EnrollmentTokenCreate, create_all
from model_packager.signing import load_public_key, public_key_bytes
from tests.security.conftest import SecuredHub, connect


@pytest.fixture
def grpc_target(secured: SecuredHub, tmp_path: Path) -> Iterator[str]:
    server, port = start_grpc_server(
        store=FileArtifactStore(root=tmp_path / "artifacts"),
        host="127.0.0.1",
        port=0,
        devices=DeviceServicer(security=secured.security),
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _token(hub: SecuredHub, **spec: object) -> str:
    with session_scope(hub.engine) as session:
        _row, token = create_enrollment_token(
            session, spec=EnrollmentTokenCreate.model_validate(spec)
        )
    return token


def test_enrol_over_grpc_gives_working_credentials(
    secured: SecuredHub, grpc_target: str, tmp_path: Path
) -> None:
    token = _token(secured, group="line-2", tags={"site": "berlin"}, max_uses=1)
    agent_dir = tmp_path / "agent"
    done = enroll(
        grpc_target=grpc_target,
        token=token,
        device_id="cam-1",
        data_dir=agent_dir,
        capabilities={"runtime": "onnx"},
        tags={"hw": "rpi4", "site": "spoofed"},
    )
    assert done.mqtt_username == "cam-1" and done.mqtt_url == secured.broker.url
    for path in (done.enrollment_file, done.public_key_file):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    assert public_key_bytes(load_public_key(done.public_key_file)) == bundle_public_key(
        secured.settings
    )
    # The agent's settings pick the stored login up.
    settings = AgentSettings(device_id="cam-1", data_dir=agent_dir)
    assert settings.mqtt_username == "cam-1" and settings.mqtt_password is not None
    assert settings.mqtt_url == secured.broker.url and settings.public_key is not None
    # The credentials work at once, on the device's own topics.
    user, password = secured.hub_login()
    hub = connect(secured.broker.port, user=user, password=password, client_id="hub-g")
    hub.subscribe(secured.topics.telemetry("cam-1"))
    device = connect(
        secured.broker.port, user="cam-1", password=settings.mqtt_password.get_secret_value()
    )
    device.publish(secured.topics.telemetry("cam-1"), b"hello")
    assert hub.next_message() == (secured.topics.telemetry("cam-1"), b"hello")
    with Session(secured.engine) as session:
        row = session.get(Device, "cam-1")
        assert row is not None and row.group == "line-2"
        assert row.tags == {"site": "berlin", "hw": "rpi4"}  # the token's tag wins
        assert row.capabilities == {"runtime": "onnx"}
        stored = session.get(DeviceCredential, "cam-1")
        assert stored is not None and done.mqtt_password not in stored.password_hash
        assert token not in str(session.exec(select(EnrollmentToken)).all())


def test_grpc_refuses_used_up_expired_and_unknown_tokens(
    secured: SecuredHub, grpc_target: str, tmp_path: Path
) -> None:
    once = _token(secured, max_uses=1)
    enroll(grpc_target=grpc_target, token=once, device_id="d-1", data_dir=tmp_path)
    with pytest.raises(EnrollError, match="used up") as used:
        enroll(grpc_target=grpc_target, token=once, device_id="d-2", data_dir=tmp_path)
    assert used.value.code == "permission_denied"
    expired = _token(secured, max_uses=5)
    with session_scope(secured.engine) as session:
        for row in session.exec(select(EnrollmentToken)).all():
            row.expires_at = utcnow() - timedelta(seconds=1)
            session.add(row)
    with pytest.raises(EnrollError, match="expired") as late:
        enroll(grpc_target=grpc_target, token=expired, device_id="d-3", data_dir=tmp_path)
    assert late.value.code == "permission_denied"
    with pytest.raises(EnrollError, match="unknown enrollment token") as unknown:
        enroll(grpc_target=grpc_target, token="elt_nope", device_id="d-4", data_dir=tmp_path)
    assert unknown.value.code == "unauthenticated"
    with pytest.raises(EnrollError) as bad_id:
        enroll(grpc_target=grpc_target, token=once, device_id="a/b", data_dir=tmp_path)
    assert bad_id.value.code == "invalid_argument"
    assert not (tmp_path / "d-2").exists()


ENDPOINTS = DeviceEndpoints(
    mqtt_url="mqtt://127.0.0.1:1", artifact_endpoint="127.0.0.1:2", hub_public_key=b"k" * 32
)


def test_token_rules_on_both_databases(database_url: str) -> None:
    engine = make_engine(database_url)
    create_all(engine)
    try:
        with session_scope(engine) as session:
            row, token = create_enrollment_token(
                session, spec=EnrollmentTokenCreate(max_uses=2, group="g")
            )
            assert row.token_hash != token and token.startswith("elt_")

        def use(device_id: str, secret: str = token) -> None:
            with session_scope(engine) as session:
                enroll_device(
                    session,
                    device_id=device_id,
                    token=secret,
                    capabilities={},
                    tags={},
                    settings=ENDPOINTS,
                )

        use("t-1")
        use("t-2")
        with pytest.raises(EnrollmentRefused, match="used up"):
            use("t-3")
        with pytest.raises(Unauthorized):
            use("t-4", "elt_wrong")
        with pytest.raises(InvalidInput, match="reserved"):
            use("edgeloop-hub")
        with Session(engine) as session:
            assert session.get(Device, "t-3") is None  # a refusal leaves nothing behind
            stored = session.exec(select(EnrollmentToken)).one()
            assert stored.uses == 2
    finally:
        engine.dispose()
