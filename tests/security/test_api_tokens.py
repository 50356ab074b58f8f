"""Admin-API tokens with scopes, and the enrolment routes, through the real app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session
from starlette.testclient import TestClient

from hub.api import create_app
from hub.core.settings import HubSettings
from hub.security import enrollment

ADMIN = "a" * 40


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = HubSettings(data_dir=tmp_path, admin_token=ADMIN)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        yield http


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_read_token_can_get_but_not_change(client: TestClient) -> None:
    made = client.post("/api/v1/tokens", json={"name": "grafana", "scope": "read"})
    assert made.status_code == 201, made.text
    read = _bearer(made.json()["token"])
    assert client.get("/api/v1/devices", headers=read).status_code == 200
    assert client.get("/api/v1/models", headers=read).status_code == 200
    for method, path, body in [
        ("POST", "/api/v1/devices", {"id": "x-1"}),
        ("POST", "/api/v1/tokens", {"name": "escalate", "scope": "admin"}),
        ("POST", "/api/v1/enrollment-tokens", {}),
        ("DELETE", "/api/v1/devices/x-1", None),
    ]:
        denied = client.request(method, path, json=body, headers=read)
        assert denied.status_code == 403, (method, path, denied.text)
        assert denied.json()["code"] == "forbidden"
    assert client.get("/api/v1/devices/x-1").status_code == 404  # nothing was created


def test_admin_tokens_work_and_revocation_is_immediate(client: TestClient) -> None:
    made = client.post("/api/v1/tokens", json={"name": "ci", "scope": "admin"}).json()
    admin = _bearer(made["token"])
    assert client.post("/api/v1/devices", json={"id": "y-1"}, headers=admin).status_code == 201
    listed = client.get("/api/v1/tokens").json()
    assert [t["name"] for t in listed] == ["ci"] and "token" not in listed[0]
    assert client.post(f"/api/v1/tokens/{made['id']}/revoke").status_code == 200
    refused = client.get("/api/v1/devices", headers=admin)
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert client.get("/api/v1/devices").status_code == 200  # the bootstrap token still works
    assert client.get("/api/v1/devices", headers=_bearer("elk_" + "x" * 43)).status_code == 401


def test_admin_enrolment_route_issues_and_revokes_credentials(client: TestClient) -> None:
    made = client.post(
        "/api/v1/enrollment-tokens", json={"group": "g", "tags": {"a": "b"}, "max_uses": 3}
    )
    assert made.status_code == 201 and made.json()["token"].startswith("elt_")
    assert "token" not in client.get("/api/v1/enrollment-tokens").json()[0]
    first = client.post("/api/v1/devices/z-1/enroll", json={"group": "lab", "tags": {"k": "v"}})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["mqtt_username"] == "z-1" and len(body["mqtt_password"]) >= 24
    assert len(bytes.fromhex(body["hub_public_key"])) == 32
    device = client.get("/api/v1/devices/z-1").json()
    assert device["group"] == "lab" and device["tags"] == {"k": "v"}
    again = client.post("/api/v1/devices/z-1/enroll", json={}).json()
    assert again["rotated"] and again["mqtt_password"] != body["mqtt_password"]
    assert client.get("/api/v1/devices/z-1/credentials").json()["enrolled"] is True
    assert client.post("/api/v1/devices/z-1/revoke").json() == {"device_id": "z-1", "revoked": True}
    assert client.get("/api/v1/devices/z-1/credentials").json()["enrolled"] is False
    client.post("/api/v1/devices/z-2/enroll", json={})
    assert client.delete("/api/v1/devices/z-2").status_code == 204
    assert client.get("/api/v1/devices/z-2/credentials").status_code == 404  # no such device
    with Session(client.app.state.hub.engine) as session:  # type: ignore[attr-defined]
        assert enrollment.credential_status(session, device_id="z-2")["enrolled"] is False
    bad = client.post("/api/v1/devices/edgeloop-hub/enroll", json={})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
