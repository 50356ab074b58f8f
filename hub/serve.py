"""``edgeloop hub serve``: the composition root. It builds every part of the hub as a
:class:`~hub.core.service.Service`, starts them in order on one ExitStack (each one's stop
pushed as it starts, so they stop in reverse, also when a later one fails to start), and
serves the admin API in front until SIGTERM or SIGINT.

With no ``mqtt_url`` the hub starts and owns an embedded broker (Mosquitto as a child
process when installed, else amqtt in-process); everything stops with the hub. ``/healthz``
reports each service's ``health()`` under ``services``.
"""

from __future__ import annotations

import logging
import signal
from contextlib import ExitStack
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from uvicorn.config import LOGGING_CONFIG

from hub.api import create_app
from hub.cluster.member import COMPONENTS, ClusterMember, new_replica_id, parse_components
from hub.core.artifacts import DownloadLinks, open_store
from hub.core.db import make_engine
from hub.core.errors import EdgeloopError
from hub.core.redact import redact_url, redacting_log_config
from hub.core.service import Gate, Owning, Periodic, Service
from hub.core.settings import TOKEN_FILE, HubSettings, SettingsError
from hub.fleet.commands import CommandPublisher
from hub.ingest.serve import broker_ingest_worker
from hub.monitoring.serve import monitor_service
from hub.mqtt.auth import BrokerAuth, hub_mqtt_url
from hub.mqtt.embedded import embedded_broker
from hub.retention.service import retention_service
from hub.rollouts.controller import RolloutController
from hub.rpc.auth import DeviceCertAuth
from hub.rpc.devices import DeviceServicer
from hub.rpc.server import GrpcService
from hub.security.client_certs import DeviceCA
from hub.security.key_rotation import KeyRotationSender
from hub.security.runtime import Security, device_artifact_endpoint, device_endpoints
from hub.tables import create_all
from hub.triggers.serve import trigger_service
from hub.ui import LOGIN_CODE_TTL_S, login_link
from proto.topics import Topics

log = logging.getLogger("edgeloop.hub")
S = TypeVar("S", bound=Service)


class _Stop(EdgeloopError):
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


def _shown_host(host: str) -> str:
    """The host of a URL to this hub: a wildcard bind is reached on loopback."""
    if host in {"", "0.0.0.0", "::"}:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def sign_in_lines(settings: HubSettings, app: FastAPI | None, *, grpc: str) -> list[str]:
    """What ``hub serve`` says about signing in: where the admin token is (never the token),
    a one-time dashboard link in dev mode (``app``: the one serving it), how a device joins."""
    base = f"http://{_shown_host(settings.api_host)}:{settings.api_port}"
    if settings.admin_token is not None:
        where = "the one in EDGELOOP_ADMIN_TOKEN"
        cli = "the CLI reads EDGELOOP_ADMIN_TOKEN"
    else:
        path = settings.data_dir / TOKEN_FILE
        where = f"in {path} (0600)"
        cli = f"for the CLI: export EDGELOOP_ADMIN_TOKEN=$(cat {path})"
    lines = []
    if settings.mode == "dev" and app is not None:
        lines.append(
            f"dashboard: {login_link(app, base)} (signs you in once, within "
            f"{LOGIN_CODE_TTL_S / 60:g} minutes)"
        )
    lines += [
        f"admin token: {where}; sign in at {base}/ui/login with it; {cli}",
        f"devices: `edgeloop --hub {base} device token create` makes an enrolment token; "
        f"a device joins with `edgeloop agent run --device-id ID --enroll-token TOKEN "
        f"--grpc {grpc}`",
    ]
    return lines


def _device_certs(settings: HubSettings, engine: Engine) -> DeviceCertAuth | None:
    """With client certificates on, bundle downloads need one too (``hub.rpc.auth``)."""
    if not settings.mqtt_client_certs:
        return None
    ca = DeviceCA.for_data_dir(settings.data_dir)
    return DeviceCertAuth(ca_file=ca.ca_file, engine=engine, port=settings.grpc_mtls_port)


def _gated(service: S, lease: Gate) -> S:
    """``service`` (a :class:`Periodic`, or one :class:`Owning` one) ticking only while
    ``lease`` is held."""
    inner = service.service if isinstance(service, Owning) else service
    if not isinstance(inner, Periodic):
        raise TypeError(f"{service.name} is not a Periodic: it cannot wait for a lease")
    inner.gate = lease
    return service


def _wait_for_signal() -> None:
    """A replica without the API: sleep until SIGTERM or SIGINT (``_raise_stop``)."""
    while True:
        signal.pause()


def _serve(settings: HubSettings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    components = parse_components(settings.components)
    everything = components == frozenset(COMPONENTS)
    if settings.mqtt_url is None and not everything:
        raise SettingsError(
            f"--components {','.join(sorted(components))}: the replicas of a split hub share "
            "an external broker; give --mqtt-url (EDGELOOP_MQTT_URL)"
        )
    replica = settings.replica_id or new_replica_id()
    # the artifact store first: a missing bucket, refused credentials or an unreachable
    # endpoint stop the hub here, before any broker or listener (ArtifactStoreUnavailable)
    store = open_store(settings.resolved_artifact_url)
    store.check()
    links = (
        DownloadLinks(store, ttl_s=settings.artifact_presign_ttl_s)
        if settings.artifact_presign
        else None
    )
    services: list[Service] = []
    with ExitStack() as stack:

        def run(service: S) -> S:
            service.start()
            stack.callback(service.stop)
            services.append(service)
            return service

        engine = make_engine(settings.resolved_database_url)
        create_all(engine)
        stack.callback(engine.dispose)
        # first up, last down: the leases it holds gate the singleton services below
        cluster = run(
            ClusterMember(
                engine=engine,
                components=components,
                lease_s=settings.cluster_lease_s,
                replica_id=replica,
            )
        )
        broker_auth = BrokerAuth(settings=settings, engine=engine)
        stack.callback(broker_auth.close)
        mqtt_url = hub_broker = settings.mqtt_url
        broker_kind = "external"
        if mqtt_url is None:
            broker = run(embedded_broker(settings, broker_auth=broker_auth))
            mqtt_url, broker_kind = broker.url, f"embedded-{broker.kind_in_use}"
            hub_broker = broker.internal_url  # the hub's loopback listener (hub/mqtt/broker.py)
        # The hub's own MQTT clients connect with this (the hub user's login when secured).
        hub_mqtt = hub_mqtt_url(settings, broker_url=hub_broker)
        # one MQTT session per replica and client when several share the broker
        suffix = "" if everything and settings.replica_id is None else f"-{replica}"
        rpc: GrpcService | None = None

        def artifact_port() -> int | None:
            return rpc.artifact_port if rpc is not None else None

        security = Security(
            settings=settings,
            engine=engine,
            broker_auth=broker_auth,
            endpoints=lambda: device_endpoints(
                settings, mqtt_url=mqtt_url, grpc_port=artifact_port()
            ),
        )
        if "grpc" in components:
            rpc = run(
                GrpcService(
                    store=store,
                    host=settings.grpc_host,
                    port=settings.grpc_port,
                    devices=DeviceServicer(security=security),
                    tls=settings.tls_files(),
                    device_certs=_device_certs(settings, engine),
                )
            )
        ingest = None
        features = None
        if "ingest" in components:
            # $share ingest only on a broker with MQTT 5 and $share, else one worker on plain
            # persistent subscriptions (hub/mqtt/features.py, docs/BROKERS.md)
            worker, features = broker_ingest_worker(
                settings,
                mqtt_url=hub_mqtt,
                embedded=None
                if broker_kind == "external"
                else broker_kind.removeprefix("embedded-"),
                client_id=f"edgeloop-hub-ingest{suffix}",
            )
            ingest = run(worker)
        key_rotation = None
        if "controller" in components and (retention := retention_service(settings)):
            run(_gated(retention, cluster.lease("retention")))
        if "triggers" in components and settings.trigger_interval_s > 0:
            run(_gated(trigger_service(settings), cluster.lease("triggers")))
        if "controller" in components:
            if settings.rollout_tick_s > 0:
                run(
                    _gated(
                        RolloutController(
                            engine=engine,
                            mqtt_url=hub_mqtt,
                            artifact_endpoint=device_artifact_endpoint(
                                settings, grpc_port=artifact_port()
                            ),
                            fleet=settings.fleet,
                            topic_prefix=settings.topic_prefix,
                            tick_s=settings.rollout_tick_s,
                            max_commands_per_s=settings.rollout_max_commands_per_s,
                            max_concurrent_downloads=settings.rollout_max_concurrent_downloads,
                            # new deploys only into free download slots (this process's
                            # artifact server; without one, the fixed limit)
                            capacity=rpc.capacity if rpc is not None else None,
                            bundle_links=links,  # presigned object-store URLs
                        ),
                        cluster.lease("rollouts"),
                    )
                )
            # devices behind on the bundle key are told to rotate (hub.security.key_rotation),
            # through a command publisher connected before the sender starts, closed after it
            publisher = CommandPublisher(
                mqtt_url=hub_mqtt,
                topics=Topics(prefix=settings.topic_prefix, fleet=settings.fleet),
                client_id=f"edgeloop-hub-keys{suffix}" if suffix else "",
            )
            publisher.start()
            stack.callback(publisher.stop)
            key_rotation = run(
                _gated(
                    KeyRotationSender(
                        engine=engine, data_dir=settings.data_dir, publisher=publisher
                    ),
                    cluster.lease("key-rotation"),
                )
            )
        if "monitor" in components and settings.monitor_interval_s > 0:
            run(
                monitor_service(
                    settings,
                    mqtt_url=hub_mqtt,
                    owns=lambda model, version: cluster.owns("monitor", f"{model}@{version}"),
                    client_id=f"edgeloop-hub-monitor{suffix}",
                )
            )

        def health() -> dict[str, Any]:
            return {
                "replica": replica,
                "components": sorted(components),
                "mqtt": {
                    "url": redact_url(mqtt_url),
                    "broker": broker_kind,
                    "features": features.as_dict() if features is not None else None,
                    "ingest_shared": ingest.shared if ingest is not None else None,
                },
                "grpc": f"{settings.grpc_host}:{rpc.port}" if rpc is not None else None,
                "grpc_artifacts": (
                    f"{settings.grpc_host}:{rpc.artifact_port}" if rpc is not None else None
                ),
                "artifacts": {
                    "url": redact_url(settings.resolved_artifact_url),
                    "presigned_downloads": links is not None,
                    "presign_failures": links.failures if links is not None else 0,
                },
                "services": {service.name: service.health() for service in services},
            }

        grpc_at = f"{settings.grpc_host}:{rpc.port}" if rpc is not None else "elsewhere"
        log.info(
            "hub replica %s (%s): gRPC %s, MQTT %s (%s), data in %s",
            replica,
            ",".join(sorted(components)),
            grpc_at,
            redact_url(mqtt_url),
            broker_kind,
            settings.data_dir,
        )
        if "api" not in components:
            _wait_for_signal()
            return
        app = create_app(settings, extra_health=health)
        app.state.ingest = ingest  # GET /api/v1/ingest/stats reports its counters
        app.state.security = security
        app.state.key_rotation = key_rotation
        app.state.hub_mqtt_url = hub_mqtt  # never logged: it carries the hub's password
        log.info("hub on http://%s:%s (docs at /docs)", settings.api_host, settings.api_port)
        for line in sign_in_lines(settings, app, grpc=grpc_at):
            log.info("%s", line)
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="info",
            # the access log would show /ui/login?token=... (hub.core.redact masks it)
            log_config=redacting_log_config(LOGGING_CONFIG),
        )
