"""Reaching an MQTT broker for :mod:`hub.mqtt.broker`: the CONNECT/CONNACK probe its start-up
waits on (also ``wait_for_mqtt`` for anyone), and claiming its port."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hub.core.errors import EdgeloopError


class BrokerError(EdgeloopError, RuntimeError):
    """The embedded broker could not be started or reached; the message says why."""

    code = "broker_unavailable"
    status = 503


def wait_for_mqtt(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    auth: tuple[str, str] | None = None,
    tls_ca: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
) -> None:
    """Return once ``host:port`` answers an MQTT 3.1.1 CONNECT with a CONNACK; else raise.

    ``tls_ca``: connect over TLS and verify the broker's certificate against this CA file;
    ``client_cert``: (cert, key) files to present.
    """
    wait_for_connack(host, port, timeout=timeout, auth=auth, tls_ca=tls_ca, client_cert=client_cert)


def probe(
    host: str,
    port: int,
    timeout: float,
    auth: tuple[str, str] | None,
    tls_ca: Path | None,
    client_cert: tuple[Path, Path] | None = None,
) -> str | None:
    """One CONNECT attempt (as ``auth`` = user, password if given): None when accepted."""
    client_id = f"edgeloop-probe-{uuid.uuid4().hex[:12]}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if auth is not None:
        client.username_pw_set(*auth)
    if tls_ca is not None:
        cert, key = client_cert if client_cert is not None else (None, None)
        client.tls_set(
            ca_certs=str(tls_ca),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
    client.connect_timeout = timeout
    codes: list[Any] = []
    client.on_connect = lambda _c, _u, _f, code, _p: codes.append(code)
    deadline, lost = time.monotonic() + timeout, False
    try:
        client.connect(host, port, keepalive=10)
        while not codes and not lost and time.monotonic() < deadline:
            lost = client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS
    except OSError as exc:
        return str(exc) or type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.01)
    if not codes:
        return "connection closed before CONNACK" if lost else "no CONNACK in time"
    return f"CONNACK refused: {codes[0]}" if codes[0].is_failure else None


def wait_for_connack(
    host: str,
    port: int,
    *,
    timeout: float,
    failed: Callable[[], str | None] | None = None,
    auth: tuple[str, str] | None = None,
    tls_ca: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
) -> None:
    """Retry CONNECT until accepted; ``failed()`` returning text aborts early (a dead child)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if failed is not None and (why := failed()):
            raise BrokerError(why)
        wait = max(0.2, min(deadline - time.monotonic(), 2.0))
        reason = probe(host, port, wait, auth, tls_ca, client_cert)
        if reason is None:
            return
        if time.monotonic() + delay >= deadline:
            raise BrokerError(f"no MQTT broker answered on {host}:{port} in {timeout:g}s: {reason}")
        time.sleep(delay)  # backoff between attempts, bounded by the deadline
        delay = min(delay * 2, 0.2)


def claim_port(host: str, port: int) -> int:
    """``port`` if nothing listens there (0: a free one), else a clear BrokerError."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the brokers do
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"cannot start the embedded MQTT broker on {host}:{port}: {exc.strerror}; set "
                "EDGELOOP_EMBEDDED_MQTT_PORT to a free port (0 picks one) or point "
                "EDGELOOP_MQTT_URL at the broker that is running there"
            ) from exc
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with contextlib.suppress(BrokerError):
        return claim_port(host, port) == port
    return False
