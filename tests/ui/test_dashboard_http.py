"""Dashboard sign-in, CSRF and scopes over HTTP, on SQLite and PostgreSQL (no browser)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from hub.api import create_app
from hub.core.db import session_scope
from hub.core.settings import HubSettings
from hub.rollouts import service
from hub.security.api_tokens import create_token, revoke_token
from hub.tables import ApiTokenCreate, Device, TokenScope
from hub.ui._charts import Series, line_chart

ADMIN = "http-admin-" + "y" * 32
BASE = "http://testserver"


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = HubSettings(data_dir=tmp_path, database_url=database_url, admin_token=ADMIN)
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


def _rollout(client: TestClient) -> str:
    engine = client.app.state.hub.engine  # type: ignore[attr-defined]
    with session_scope(engine) as s:
        s.add(Device(id="d-1", group="field", online=True))
        r = service.create_rollout(
            s,
            model="m",
            version="1",
            selector="group:field",
            phases="1,100%",
            bundle_digest="sha256:" + "0" * 64,
            bundle_size=10,
        )
        return r.id


def _token(client: TestClient, scope: TokenScope) -> tuple[int, str]:
    engine = client.app.state.hub.engine  # type: ignore[attr-defined]
    with session_scope(engine) as s:
        row, token = create_token(s, spec=ApiTokenCreate(name=f"t-{scope}", scope=scope))
        assert row.id is not None
        return row.id, token


def _login(client: TestClient, token: str) -> None:
    client.cookies.clear()
    r = client.post(
        "/ui/login", data={"token": token, "next": "/ui/rollouts"}, follow_redirects=False
    )
    assert r.status_code == 303, r.text


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def _state(client: TestClient, rollout_id: str) -> str:
    engine = client.app.state.hub.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        return str(service.get_rollout(s, rollout_id=rollout_id).state)


def test_pages_need_a_valid_token_and_the_cookie_is_httponly_strict(client: TestClient) -> None:
    r = client.get("/ui/rollouts?x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/rollouts%3Fx%3D1"
    assert client.get("/ui/fleet?fragment=1").status_code == 401  # polling gets a 401
    bad = client.get("/ui/login?token=wrong", follow_redirects=False)
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    ok = client.get(f"/ui/login?token={ADMIN}&next=//evil.example/x", follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/fleet"  # no open redirect
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    for path in ("/ui/fleet", "/ui/models", "/ui/datasets", "/ui/rollouts", "/ui/monitoring"):
        page = client.get(path)
        assert page.status_code == 200 and 'data-live="3000"' in page.text, path
        assert page.headers["cache-control"] == "no-store"
    assert client.get("/ui/fleet?fragment=1").text.lstrip().startswith('<div class="cards">')
    missing = client.get("/ui/rollouts/ro-nope")
    assert missing.status_code == 404 and "ro-nope" in missing.text


def test_revoked_token_is_signed_out_at_once(client: TestClient) -> None:
    token_id, token = _token(client, TokenScope.ADMIN)
    _login(client, token)
    assert client.get("/ui/fleet").status_code == 200
    engine = client.app.state.hub.engine  # type: ignore[attr-defined]
    with session_scope(engine) as s:
        revoke_token(s, token_id=token_id)
    r = client.get("/ui/fleet", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_actions_need_csrf_same_origin_and_admin_scope(client: TestClient) -> None:
    rollout_id = _rollout(client)
    action = f"/ui/rollouts/{rollout_id}/pause"

    _login(client, _token(client, TokenScope.READ)[1])
    page = client.get(f"/ui/rollouts/{rollout_id}")
    assert page.status_code == 200 and 'id="action-' not in page.text
    refused = client.post(action, data={"csrf": _csrf(page.text)}, follow_redirects=False)
    assert refused.status_code == 403 and _state(client, rollout_id) == "running"

    _login(client, ADMIN)
    page = client.get(f"/ui/rollouts/{rollout_id}")
    assert 'id="action-pause"' in page.text and 'id="action-resume"' not in page.text
    csrf = _csrf(page.text)
    assert client.post(action, data={}, follow_redirects=False).status_code == 403
    assert client.post(action, data={"csrf": "0" * 64}, follow_redirects=False).status_code == 403
    cross = client.post(
        action,
        data={"csrf": csrf},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert cross.status_code == 403 and _state(client, rollout_id) == "running"

    done = client.post(
        action, data={"csrf": csrf}, headers={"Origin": BASE}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"].endswith("?done=pause")
    assert _state(client, rollout_id) == "paused"
    again = client.post(action, data={"csrf": csrf}, follow_redirects=False)  # not allowed now
    assert again.status_code == 303 and "?error=" in again.headers["location"]
    page = client.get(f"/ui/rollouts/{rollout_id}")
    assert 'id="action-resume"' in page.text and 'id="action-pause"' not in page.text
    unknown = client.post(f"/ui/rollouts/{rollout_id}/explode", data={"csrf": csrf})
    assert unknown.status_code == 404


def test_line_chart_draws_series_threshold_and_fired_points() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    points = [(t0 + timedelta(minutes=i), float(i)) for i in range(5)]
    svg = str(
        line_chart(
            title="drift <x>",
            series=[
                Series(name="version:m@1", points=points, fired=[i > 2 for i in range(5)]),
                Series(name="threshold", points=[(t, 2.5) for t, _ in points], threshold=True),
            ],
        )
    )
    assert svg.count("<polyline") == 2 and svg.count('class="fired"') == 2
    assert "stroke-dasharray" in svg and "drift &lt;x&gt;" in svg and "<x>" not in svg
    assert "no data yet" in str(line_chart(title="empty", series=[Series(name="s", points=[])]))
