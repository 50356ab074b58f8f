"""No secret is ever shown: a real ``hub serve`` on an external, password-protected Mosquitto
and a PostgreSQL URL with a password, with planted secrets searched for everywhere the hub
shows something: /healthz, every GET of the API and the dashboard, answers to writes and
errors, its log (stdout + stderr, the access log included) and the CLI's start-up errors."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest

from hub.core.redact import redact_text, redact_url
from hub.mqtt.broker import BrokerAuthFiles, EmbeddedBroker
from hub.security.passwords import hash_password
from tests.fixtures.brokers import require_mosquitto

# distinctive, and with a character that URLs carry percent-encoded
MQTT_SECRET = "mq-Pl@nted-7f3a9c51"
DB_SECRET = "db-Pl@nted-2be8d604"
ADMIN_TOKEN = "admin-Planted-0c9e4f7a1d2b3c4d5e6f7a8b"
SHORT_TOKEN = "short-Planted-5d1e"  # refused by production mode: the error must not quote it
SECRETS = [MQTT_SECRET, DB_SECRET, ADMIN_TOKEN, SHORT_TOKEN]
FORMS = [form for s in SECRETS for form in {s, quote(s, safe=""), quote(s)}]
USER = "ext-hub"


def _leaks(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redact_url_and_text() -> None:
    url = f"mqtt://{USER}:{quote(MQTT_SECRET, safe='')}@broker:1883?ca_file=/etc/ca.pem"
    assert redact_url(url) == f"mqtt://{USER}:***@broker:1883?ca_file=/etc/ca.pem"
    assert redact_url("postgresql+psycopg://u:p:w@db/x?password=s&sslmode=require") == (
        "postgresql+psycopg://u:***@db/x?password=***&sslmode=require"
    )
    assert redact_url("mqtt://127.0.0.1:1883") == "mqtt://127.0.0.1:1883"
    assert redact_url("sqlite:////var/lib/edgeloop/hub.db") == "sqlite:////var/lib/edgeloop/hub.db"
    line = f"x 'mqtts://a:{MQTT_SECRET}@h:8883' and 'postgresql://b:{DB_SECRET}@db/e' y"
    assert _leaks(redact_text(line)) == []
    assert redact_text("GET /ui/login?next=/ui&token=abc HTTP/1.1") == (
        "GET /ui/login?next=/ui&token=*** HTTP/1.1"
    )


@pytest.fixture
def external_broker(tmp_path: Path) -> Iterator[str]:
    """A Mosquitto the hub does not own, with a password file: the URL with the login."""
    require_mosquitto()
    folder = tmp_path / "external"
    folder.mkdir()
    passwd, acl = folder / "passwd", folder / "acl"
    passwd.write_text(f"{USER}:{hash_password(MQTT_SECRET, iterations=1000)}\n")
    acl.write_text(f"user {USER}\ntopic readwrite #\n")
    broker = EmbeddedBroker(
        kind="mosquitto",
        port=0,
        data_dir=folder,
        auth=BrokerAuthFiles(password_file=passwd, acl_file=acl, probe=(USER, MQTT_SECRET)),
    )
    broker.start()  # its start-up probe logs in: the password works
    try:
        # the listener without client-id binding: the hub's clients share one login
        yield f"mqtt://{USER}:{quote(MQTT_SECRET, safe='')}@127.0.0.1:{broker.internal_port}"
    finally:
        broker.stop()


@pytest.fixture
def database_with_password(postgres_url: str) -> str:
    """The run's PostgreSQL database, its URL carrying a password (trust auth ignores it;
    a server that checks it would need the role's password set to the same)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    head, tail = postgres_url.split("://", 1)
    user, rest = tail.split("@", 1)
    return f"{head}://{user}:{quote(DB_SECRET, safe='')}@{rest}"


def _main_output(env: dict[str, str]) -> str:
    """``edgeloop hub serve`` in-process with ``env`` (a settings error stops it before
    anything starts): its exit code must be 2; stdout + stderr, lines unwrapped."""
    from edgeloop_cli import main

    out, err = io.StringIO(), io.StringIO()
    level = logging.getLogger().level  # `hub serve` raises the root logger to INFO
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        for key, value in env.items():
            mp.setenv(key, value)
        code = main(["hub", "serve"])
    logging.getLogger().setLevel(level)
    text = " ".join((out.getvalue() + err.getvalue()).split())  # (rich wraps lines)
    assert code == 2, text
    return text


def _startup_errors(env: dict[str, str], broker_url: str, database_url: str) -> dict[str, str]:
    """What the CLI prints for bad settings and what an unreachable database raises."""
    from hub.core.db import make_engine

    shown = {}
    bad_broker = {**env, "EDGELOOP_MQTT_URL": broker_url.replace("mqtt://", "http://")}
    text = _main_output(bad_broker)
    assert "is not a broker address" in text and "***" in text, text
    assert "user:password@host" in text and "input_value" not in text
    shown["bad EDGELOOP_MQTT_URL"] = text
    # a model-level check: pydantic would quote every setting (token, URLs) in its message
    weak = {**env, "EDGELOOP_MODE": "production", "EDGELOOP_ADMIN_TOKEN": SHORT_TOKEN}
    text = _main_output(weak)
    assert "needs EDGELOOP_ADMIN_TOKEN of at least" in text and "input_value" not in text, text
    shown["short admin token"] = text
    dead = make_engine(re.sub(r"@[^/]+/", "@127.0.0.1:1/", database_url))
    with pytest.raises(Exception) as failed:
        dead.connect()
    dead.dispose()
    shown["unreachable database"] = "".join(traceback.format_exception(failed.value))
    return shown


def _ui_get_paths() -> list[str]:
    from hub.ui.routes import router

    return sorted(
        {r.path for r in router.routes if "GET" in getattr(r, "methods", set())}  # type: ignore[attr-defined]
    )


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values.get(m.group(1), "x"), path)


def test_no_secret_in_health_pages_api_logs_or_errors(
    tmp_path: Path, external_broker: str, database_with_password: str
) -> None:
    api, grpc_port = _free_port(), _free_port()
    log = tmp_path / "hub.log"
    env = {
        "EDGELOOP_DATA_DIR": str(tmp_path / "data"),
        "EDGELOOP_MQTT_URL": external_broker,
        "EDGELOOP_DATABASE_URL": database_with_password,
        "EDGELOOP_ADMIN_TOKEN": ADMIN_TOKEN,
        "EDGELOOP_API_PORT": str(api),
        "EDGELOOP_GRPC_PORT": str(grpc_port),
        "EDGELOOP_GRPC_MTLS_PORT": str(_free_port()),
        "EDGELOOP_MONITOR_INTERVAL_S": "1",
        "EDGELOOP_TRIGGER_INTERVAL_S": "1",
    }
    shown: dict[str, str] = {}  # where -> what the hub showed there
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop_cli", "hub", "serve"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{api}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"hub exited:\n{redact_text(log.read_text())}"
            assert time.monotonic() < deadline, "hub did not answer /healthz in 60 s"
            try:
                health = httpx.get(f"{base}/healthz", timeout=1)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = health.json()
        assert body["mqtt"]["broker"] == "external"
        assert body["database"] == "postgresql"
        assert body["mqtt"]["url"].startswith(f"mqtt://{USER}:***@127.0.0.1:")
        shown["/healthz"] = health.text

        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=base, timeout=30, follow_redirects=True) as client:
            # writes whose answers carry broker addresses: enrolment (token, then admin)
            token = client.post(
                "/api/v1/enrollment-tokens", headers=admin, json={"name": "t", "max_uses": 2}
            )
            assert token.status_code in (200, 201), token.text
            shown["POST enrollment-tokens"] = token.text.replace(token.json()["token"], "")
            enrolled = client.post("/api/v1/devices/dev-1/enroll", headers=admin, json={})
            assert enrolled.status_code in (200, 201), enrolled.text
            assert "@" not in enrolled.json()["mqtt_url"]  # devices get no credentials
            shown["POST enroll"] = enrolled.text.replace(enrolled.json()["mqtt_password"], "")
            shown["401"] = client.get("/api/v1/devices", headers={"Authorization": "Bearer x"}).text

            openapi = client.get("/openapi.json")
            shown["/openapi.json"] = openapi.text
            values = {"device_id": "dev-1", "name": "digits-cnn", "version": "1"}
            api_paths = [
                _fill(path, values)
                for path, ops in openapi.json()["paths"].items()
                if "get" in ops and path != "/healthz"
            ]
            assert len(api_paths) > 20
            for path in api_paths:
                answer = client.get(path, headers=admin)
                assert answer.status_code < 500, f"{path}: {answer.status_code} {answer.text}"
                shown[f"GET {path}"] = answer.text
            for path in ("/docs", "/redoc"):
                shown[f"GET {path}"] = client.get(path).text

            # the dashboard: signed in through the link (its ?token= reaches the access log)
            login = client.get("/ui/login", params={"token": ADMIN_TOKEN, "next": "/ui/fleet"})
            assert login.status_code == 200 and "edgeloop_ui" in client.cookies, login.text
            ui_paths = [_fill(p, values) for p in _ui_get_paths() if p != "/ui/login"]
            assert {"/ui/fleet", "/ui/models", "/ui/monitoring"} <= set(ui_paths)
            for path in ui_paths:
                page = client.get(path)
                assert page.status_code < 500, f"{path}: {page.status_code}"
                shown[f"GET {path}"] = page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "hub on http://" in text and "GET /ui/fleet" in text  # banner and access log
    assert f"MQTT mqtt://{USER}:***@127.0.0.1:" in text  # the banner names the broker, masked
    assert "token=***" in text  # the sign-in link was logged, masked
    shown["hub log"] = text

    # start-up errors (in-process: the same code paths as the CLI, without a second start)
    shown.update(_startup_errors(env, external_broker, database_with_password))

    leaks = {where: _leaks(what) for where, what in shown.items() if _leaks(what)}
    assert not leaks, f"secrets shown: {leaks}"
