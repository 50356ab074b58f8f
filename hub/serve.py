"""``edgeloop hub serve``: the admin API, the gRPC artifact service and the broker, together.

With no ``mqtt_url`` the hub starts and owns an embedded broker (Mosquitto as a child
process when installed, else amqtt in-process); everything stops with the hub.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from hub.api import create_app
from hub.core import db as hub_db
from hub.core.artifacts import open_store
from hub.core.redact import redact_url, redacting_log_config
from hub.core.settings import HubSettings
from hub.mqtt.auth import BrokerAuth, hub_mqtt_url
from hub.mqtt.embedded import start_embedded_broker
from hub.rpc.auth import DeviceCertAuth
from hub.rpc.devices import DeviceServicer
from hub.rpc.server import serve_grpc
from hub.security.runtime import Security, device_artifact_endpoint, device_endpoints
from hub.tables import create_all

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


def _start_key_rotation(settings: HubSettings, *, engine: Any, mqtt_url: str) -> Any:
    """The thread that tells devices behind on the bundle key to rotate
    (hub.security.key_rotation)."""
    from hub.fleet.commands import CommandPublisher
    from hub.security.key_rotation import KeyRotationSender
    from proto.topics import Topics

    publisher = CommandPublisher(
        mqtt_url=mqtt_url, topics=Topics(prefix=settings.topic_prefix, fleet=settings.fleet)
    )
    sender = KeyRotationSender(engine=engine, data_dir=settings.data_dir, publisher=publisher)
    publisher.start()
    sender.start(on_stop=publisher.stop)
    return sender


def _start_retention(settings: HubSettings) -> Callable[[], None]:
    """The hourly retention thread (hub.retention.service); returns its stop (a no-op when off)."""
    from hub.retention.service import RetentionLoop, RetentionPolicy

    policy = RetentionPolicy.from_settings(settings)
    if not policy.enabled:
        return lambda: None
    engine = hub_db.make_engine(settings.resolved_database_url)
    loop = RetentionLoop(engine=engine, policy=policy)
    loop.start()

    def stop() -> None:
        loop.stop()
        engine.dispose()

    return stop


def _device_certs(settings: HubSettings, engine: Any) -> DeviceCertAuth | None:
    """With client certificates on, bundle downloads need one too (``hub.rpc.auth``)."""
    if not settings.mqtt_client_certs:
        return None
    from hub.security.client_certs import DeviceCA

    ca = DeviceCA.for_data_dir(settings.data_dir)
    return DeviceCertAuth(ca_file=ca.ca_file, engine=engine, port=settings.grpc_mtls_port)


def _serve(settings: HubSettings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        security_engine = hub_db.make_engine(settings.resolved_database_url)
        create_all(security_engine)
        stack.callback(security_engine.dispose)
        broker_auth = BrokerAuth(settings=settings, engine=security_engine)
        stack.callback(broker_auth.close)
        mqtt_url = hub_broker = settings.mqtt_url
        broker_kind = "external"
        if mqtt_url is None:
            broker = start_embedded_broker(settings, broker_auth=broker_auth)
            stack.callback(broker.stop)
            mqtt_url, broker_kind = broker.url, f"embedded-{broker.kind_in_use}"
            hub_broker = broker.internal_url  # the hub's loopback listener (hub/mqtt/broker.py)
        # The hub's own MQTT clients connect with this (the hub user's login when secured).
        hub_mqtt = hub_mqtt_url(settings, broker_url=hub_broker)
        security = Security(
            settings=settings,
            engine=security_engine,
            broker_auth=broker_auth,
            endpoints=lambda: device_endpoints(
                settings, mqtt_url=mqtt_url, grpc_port=rpc.artifact_port
            ),
        )
        rpc = serve_grpc(
            store=open_store(settings.resolved_artifact_url),
            host=settings.grpc_host,
            port=settings.grpc_port,
            devices=DeviceServicer(security=security),
            tls=settings.tls_files(),
            device_certs=_device_certs(settings, security_engine),
        )
        stack.callback(rpc.server.stop, 2.0)
        grpc_port = rpc.port
        from hub.ingest.serve import start_hub_worker

        # amqtt has no $share: a single worker on plain filters there.
        ingest = start_hub_worker(
            settings,
            mqtt_url=hub_mqtt,
            shared=settings.ingest_shared and broker_kind != "embedded-amqtt",
        )
        stack.callback(ingest.stop)
        stack.callback(_start_retention(settings))
        if settings.trigger_interval_s > 0:
            from hub.core.db import make_engine
            from hub.triggers.loop import TriggerLoop

            engine = make_engine(settings.resolved_database_url)
            create_all(engine)
            from hub.security.keys import bundle_signing_key
            from hub.triggers import PackageAndCanary

            triggers = TriggerLoop(
                engine=engine,
                store=open_store(settings.resolved_artifact_url),
                interval_s=settings.trigger_interval_s,
                # a retrained version is packaged and canaried when its policy says so
                followup=PackageAndCanary(signing_key=lambda: bundle_signing_key(settings)),
            )
            triggers.start()
            stack.callback(triggers.stop)
        if settings.rollout_tick_s > 0:
            from hub.rollouts.controller import RolloutController

            rollouts = RolloutController(
                engine=security_engine,
                mqtt_url=hub_mqtt,
                artifact_endpoint=device_artifact_endpoint(settings, grpc_port=rpc.artifact_port),
                fleet=settings.fleet,
                topic_prefix=settings.topic_prefix,
                tick_s=settings.rollout_tick_s,
                max_commands_per_s=settings.rollout_max_commands_per_s,
                max_concurrent_downloads=settings.rollout_max_concurrent_downloads,
            )
            rollouts.start()
            stack.callback(rollouts.stop)
        key_rotation = _start_key_rotation(settings, engine=security_engine, mqtt_url=hub_mqtt)
        stack.callback(key_rotation.stop)
        if settings.monitor_interval_s > 0:
            from hub.monitoring.serve import start_monitor

            stack.callback(start_monitor(settings, mqtt_url=hub_mqtt))

        def health() -> dict[str, Any]:
            return {
                "mqtt": {"url": redact_url(mqtt_url), "broker": broker_kind},
                "grpc": f"{settings.grpc_host}:{grpc_port}",
                "grpc_artifacts": f"{settings.grpc_host}:{rpc.artifact_port}",
            }

        app = create_app(settings, extra_health=health)
        app.state.ingest = ingest  # GET /api/v1/ingest/stats reports its counters
        app.state.security = security
        app.state.key_rotation = key_rotation
        app.state.hub_mqtt_url = hub_mqtt  # never logged: it carries the hub's password
        log.info(
            "hub on http://%s:%s (docs at /docs), gRPC %s:%s, MQTT %s (%s), data in %s",
            settings.api_host,
            settings.api_port,
            settings.grpc_host,
            grpc_port,
            redact_url(mqtt_url),
            broker_kind,
            settings.data_dir,
        )
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="info",
            # the access log would show /ui/login?token=... (hub.core.redact masks it)
            log_config=redacting_log_config(LOGGING_CONFIG),
        )
