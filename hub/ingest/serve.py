"""The ingest worker ``hub serve`` runs, built from the hub's settings."""

from __future__ import annotations

from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.ingest.worker import IngestWorker
from hub.tables import create_all


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
