"""``edgeloop hub serve``: the admin API, the gRPC artifact service and the broker, together.

With no ``mqtt_url`` the hub starts and owns an embedded broker (Mosquitto as a child
process when installed, else amqtt in-process); everything stops with the hub.
"""

from __future__ import annotations

import logging
import signal
from contextlib import ExitStack
from typing import Any

import uvicorn

from hub.api import create_app
from hub.artifacts import open_store
from hub.broker import EmbeddedBroker
from hub.grpc_server import start_grpc_server
from hub.settings import HubSettings

log = logging.getLogger("edgeloop.hub")


class _Stop(Exception):
    """SIGTERM or SIGINT: leave the serve loop and stop everything the hub started."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve(settings: HubSettings) -> None:
    """Run until SIGTERM or SIGINT; then stop the API, gRPC and the embedded broker."""
    # uvicorn re-raises the signal it caught after its own shutdown; with these handlers the
    # re-raised signal unwinds through the ExitStack below instead of killing the process.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        _serve(settings)
    except _Stop as stop:
        log.info("hub stopped (%s)", stop)


def _serve(settings: HubSettings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        mqtt_url = settings.mqtt_url
        broker_kind = "external"
        if mqtt_url is None:
            broker = EmbeddedBroker(
                data_dir=settings.data_dir,
                port=settings.embedded_mqtt_port,
                kind=settings.embedded_broker,
            )
            broker.start()
            stack.callback(broker.stop)
            mqtt_url, broker_kind = broker.url, f"embedded-{broker.kind_in_use}"
        grpc_server, grpc_port = start_grpc_server(
            store=open_store(settings.resolved_artifact_url),
            host=settings.grpc_host,
            port=settings.grpc_port,
        )
        stack.callback(grpc_server.stop, 2.0)
        if settings.trigger_interval_s > 0:
            from hub.db import create_all, make_engine
            from hub.triggers.loop import TriggerLoop

            engine = make_engine(settings.resolved_database_url)
            create_all(engine)
            triggers = TriggerLoop(
                engine=engine,
                store=open_store(settings.resolved_artifact_url),
                interval_s=settings.trigger_interval_s,
            )
            triggers.start()
            stack.callback(triggers.stop)

        def health() -> dict[str, Any]:
            return {
                "mqtt": {"url": mqtt_url, "broker": broker_kind},
                "grpc": f"{settings.grpc_host}:{grpc_port}",
            }

        app = create_app(settings, extra_health=health)
        log.info(
            "hub on http://%s:%s (docs at /docs), gRPC %s:%s, MQTT %s (%s), data in %s",
            settings.api_host,
            settings.api_port,
            settings.grpc_host,
            grpc_port,
            mqtt_url,
            broker_kind,
            settings.data_dir,
        )
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")
