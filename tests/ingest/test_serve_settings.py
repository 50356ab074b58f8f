"""The worker ``hub serve`` builds: the decode process and the ack interval from settings."""

from __future__ import annotations

from pathlib import Path

from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.ingest.gaps import gaps
from hub.ingest.serve import hub_ingest_worker
from hub.mqtt.broker import EmbeddedBroker
from tests.ingest import helpers as h


def test_settings_turn_on_the_decode_process_and_turn_off_acks(
    tmp_path: Path, mosquitto: EmbeddedBroker
) -> None:
    topics = h.fleet_topics()
    settings = HubSettings(
        data_dir=tmp_path,
        fleet=topics.fleet,
        ingest_decode_process=True,
        ingest_ack_interval_s=0,
        ingest_accept_unknown_devices=True,
    )
    worker = hub_ingest_worker(settings, mqtt_url=mosquitto.url, shared=False)
    worker.start()
    try:
        assert worker.decode_process is not None  # stored by the child process
        with h.publisher(mosquitto.port) as publish:
            for seq in (1, 2, 3):
                publish(topics.telemetry("cam-9"), h.window("cam-9", seq))
            h.wait_until(lambda: worker.stats().received == 3, what="3 windows")
        worker.flush()
        h.wait_until(lambda: worker.stats().stored == 3, what="3 windows stored")
        assert worker.stats().acks_published == 0  # acks off
    finally:
        worker.stop()
    engine = make_engine(settings.resolved_database_url)
    [stream] = gaps(engine, device_id="cam-9")
    assert stream.received == 3 and not stream.missing
    engine.dispose()


def test_default_settings_keep_the_in_thread_path_and_ack(
    tmp_path: Path, mosquitto: EmbeddedBroker
) -> None:
    topics = h.fleet_topics()
    settings = HubSettings(
        data_dir=tmp_path, fleet=topics.fleet, ingest_accept_unknown_devices=True
    )
    worker = hub_ingest_worker(settings, mqtt_url=mosquitto.url, shared=False)
    worker.start()
    try:
        assert worker.decode_process is None
        with h.publisher(mosquitto.port) as publish:
            publish(topics.telemetry("cam-8"), h.window("cam-8", 1))
            h.wait_until(lambda: worker.stats().received == 1, what="1 window")
        worker.flush()
        h.wait_until(lambda: worker.stats().acks_published >= 1, what="a delivery ack")
    finally:
        worker.stop()
