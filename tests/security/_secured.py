"""The secured broker the TLS, mTLS and gRPC client-certificate tests start: generated
TLS, the hub's passwd + ACL (BrokerAuth, 50 ms debounce), a real Mosquitto."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.core.tls import TlsFiles
from hub.mqtt.auth import BrokerAuth
from hub.mqtt.broker import EmbeddedBroker
from hub.tables import create_all
from tests.fixtures.brokers import require_mosquitto


@dataclass(frozen=True)
class SecuredBroker:
    settings: HubSettings
    tls: TlsFiles
    engine: Engine
    auth: BrokerAuth
    broker: EmbeddedBroker


@contextmanager
def secured_broker(root: Path, *, client_certs: bool) -> Iterator[SecuredBroker]:
    """Settings (data dir ``root/hub``, a fresh fleet), database, auth files and a started
    Mosquitto with TLS (client certificates required when ``client_certs``); stopped after."""
    require_mosquitto()
    settings = HubSettings(
        data_dir=root / "hub",
        fleet=f"f{uuid.uuid4().hex[:8]}",
        tls_self_signed=True,
        mqtt_client_certs=client_certs,
    )
    tls = settings.tls_files()
    assert tls is not None
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    auth = BrokerAuth(settings=settings, engine=engine, debounce_s=0.05)
    broker = EmbeddedBroker(
        kind="mosquitto", port=0, data_dir=settings.data_dir, auth=auth.files(), tls=tls
    )
    broker.start()  # (with client certs its start-up probe already needs the hub's own)
    try:
        yield SecuredBroker(settings=settings, tls=tls, engine=engine, auth=auth, broker=broker)
    finally:
        broker.stop()
        engine.dispose()
