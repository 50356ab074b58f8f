"""The monitoring loop as ``edgeloop hub serve`` runs it: own engine, alerts on MQTT."""

from __future__ import annotations

from collections.abc import Callable

from hub.core.settings import HubSettings


def start_monitor(settings: HubSettings, *, mqtt_url: str | None) -> Callable[[], None]:
    """Start a :class:`MonitorLoop` (publishing alerts when a broker is known); returns stop."""
    from hub.core.artifacts import open_store
    from hub.core.db import make_engine
    from hub.monitoring.loop import MonitorLoop
    from hub.monitoring.publish import MqttAlertPublisher, alerts_topic
    from hub.monitoring.service import MonitorConfig
    from hub.tables import create_all

    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    publisher = None
    if mqtt_url:
        publisher = MqttAlertPublisher(
            url=mqtt_url, topic=alerts_topic(prefix=settings.topic_prefix, fleet=settings.fleet)
        )
    loop = MonitorLoop(
        engine=engine,
        interval_s=settings.monitor_interval_s,
        config=MonitorConfig.from_settings(settings),
        publisher=publisher,
        store=open_store(settings.resolved_artifact_url),
    )
    loop.start()

    def stop() -> None:
        loop.stop()
        if publisher is not None:
            publisher.close()
        engine.dispose()

    return stop
