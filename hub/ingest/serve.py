"""The ingest worker ``hub serve`` runs, built from the hub's settings."""

from __future__ import annotations

import logging

from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.ingest.worker import IngestWorker
from hub.mqtt.features import BrokerFeatures, broker_features, use_shared_ingest
from hub.tables import create_all
from proto.topics import Topics

log = logging.getLogger(__name__)


def hub_ingest_worker(
    settings: HubSettings, *, mqtt_url: str, shared: bool, client_id: str = "edgeloop-hub-ingest"
) -> IngestWorker:
    """The hub's in-process worker, not yet started. ``shared=False``: plain persistent
    subscriptions over MQTT 3.1.1 (the default, and the only choice on amqtt, which has
    neither ``$share`` nor MQTT 5); ``shared=True`` (``EDGELOOP_INGEST_SHARED``): ``$share``
    over MQTT 5. ``client_id``: its MQTT session (one per ingest replica).

    It decodes and stores in a child process when ``ingest_decode_process``
    (``EDGELOOP_INGEST_DECODE_PROCESS``). Retention (the telemetry roll-up included) runs in
    ``hub.retention.service.RetentionLoop``, which ``hub serve`` starts beside it.
    """
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    worker = IngestWorker(
        engine=engine,
        mqtt_url=mqtt_url,
        fleet=settings.fleet,
        topic_prefix=settings.topic_prefix,
        shared=shared,
        client_id=client_id,
        batch_size=settings.ingest_batch_size,
        batch_interval_s=settings.ingest_batch_interval_s,
        max_payload_bytes=settings.ingest_max_payload_bytes,
        accept_unknown_devices=settings.ingest_accept_unknown_devices,
        mqtt_protocol="5" if shared else "3.1.1",
        decode_process=settings.ingest_decode_process,
        ack_interval_s=settings.ingest_ack_interval_s or None,
    )
    return worker


def broker_ingest_worker(
    settings: HubSettings,
    *,
    mqtt_url: str,
    embedded: str | None,
    client_id: str = "edgeloop-hub-ingest",
) -> tuple[IngestWorker, BrokerFeatures]:
    """``hub serve``'s ingest worker, fitted to its broker: ``$share`` only where the broker
    has MQTT 5 and shared subscriptions (``embedded``: the embedded broker's kind; else the
    one ``EDGELOOP_MQTT_BROKER`` names, or what a probe finds: hub/mqtt/features.py). amqtt,
    NATS and RabbitMQ have neither: a ``$share`` filter there subscribes to nothing, so the
    hub runs one worker on plain persistent subscriptions, which is also its default."""
    features = broker_features(
        told=settings.mqtt_broker,
        embedded=embedded,
        hub_url=mqtt_url,
        topic_base=Topics(prefix=settings.topic_prefix, fleet=settings.fleet).base,
        ingest_shared=settings.ingest_shared,
    )
    shared = use_shared_ingest(requested=settings.ingest_shared, features=features)
    if settings.ingest_shared and not shared:
        log.warning(
            "EDGELOOP_INGEST_SHARED is on but the broker (%s, %s) lacks %s: one ingest "
            "worker on plain persistent subscriptions instead",
            features.broker,
            features.source,
            "MQTT 5" if not features.mqtt5 else "shared subscriptions",
        )
    worker = hub_ingest_worker(settings, mqtt_url=mqtt_url, shared=shared, client_id=client_id)
    return worker, features
