"""A secured hub for security tests: real Mosquitto with the hub-generated password + ACL files.

``secured`` gives a :class:`SecuredHub`: settings on a private data dir and fleet, a SQLite
database, the :class:`~hub.security.runtime.Security` runtime and a private Mosquitto started with
``auth=`` (the shared ``mosquitto`` fixture stays anonymous for everyone else).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine

from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.mqtt.auth import HUB_MQTT_USER, BrokerAuth, hub_mqtt_password
from hub.mqtt.broker import EmbeddedBroker
from hub.security.runtime import Security, device_endpoints
from hub.tables import create_all
from proto.topics import Topics
from tests.fixtures.brokers import require_mosquitto

WAIT_S = 10.0  # an upper bound for things that normally take milliseconds, never a measurement
DEBOUNCE_S = 0.05  # BrokerAuth's reload debounce in these tests


@dataclass
class SecuredHub:
    settings: HubSettings
    engine: Engine
    security: Security
    broker: EmbeddedBroker
    topics: Topics

    @property
    def auth(self) -> BrokerAuth:
        return self.security.broker_auth

    def hub_login(self) -> tuple[str, str]:
        return HUB_MQTT_USER, hub_mqtt_password(self.settings)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredHub]:
    require_mosquitto()
    settings = HubSettings(data_dir=tmp_path / "hub", fleet=f"f{uuid.uuid4().hex[:8]}")
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    auth = BrokerAuth(settings=settings, engine=engine, debounce_s=DEBOUNCE_S)
    broker = EmbeddedBroker(kind="mosquitto", port=0, data_dir=settings.data_dir, auth=auth.files())
    broker.start()
    security = Security(
        settings=settings,
        engine=engine,
        broker_auth=auth,
        endpoints=lambda: device_endpoints(settings, mqtt_url=broker.url, grpc_port=0),
    )
    try:
        yield SecuredHub(
            settings=settings,
            engine=engine,
            security=security,
            broker=broker,
            topics=Topics(prefix=settings.topic_prefix, fleet=settings.fleet),
        )
    finally:
        security.close()
        broker.stop()
        engine.dispose()


@dataclass
class Client:
    """A paho client on its own network thread; messages land in ``inbox``."""

    paho: mqtt.Client
    inbox: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)
    granted: queue.Queue[list[Any]] = field(default_factory=queue.Queue)

    def subscribe(self, topic: str) -> list[Any]:
        self.paho.subscribe(topic, qos=1)
        return self.granted.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes) -> None:
        self.paho.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def next_message(self) -> tuple[str, bytes]:
        return self.inbox.get(timeout=WAIT_S)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        self.paho.loop_stop()


def connect(port: int, *, user: str, password: str, client_id: str | None = None) -> Client:
    """A connected client, or ConnectionRefusedError with the broker's reason."""
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or user)
    paho.username_pw_set(user, password)
    client = Client(paho=paho)
    result: queue.Queue[Any] = queue.Queue()
    paho.on_connect = lambda _c, _u, _f, code, _p: result.put(code)
    paho.on_message = lambda _c, _u, msg: client.inbox.put((msg.topic, bytes(msg.payload)))
    paho.on_subscribe = lambda _c, _u, _mid, codes, _p: client.granted.put(list(codes))
    paho.on_disconnect = lambda *_a: client.disconnected.set()
    paho.connect("127.0.0.1", port, keepalive=30)
    paho.loop_start()
    code = result.get(timeout=WAIT_S)
    if code.is_failure:
        paho.loop_stop()
        raise ConnectionRefusedError(str(code))
    return client
