"""The hub's monitoring service: :func:`evaluate` every ``interval_s`` (from the start of one pass
to the next; a pass longer than that is followed at once), in a background thread.

``edgeloop hub serve`` runs one (``EDGELOOP_MONITOR_INTERVAL_S``, default 10 s; 0 turns it
off). A failing evaluation is logged and retried at the next tick, never fatal to the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from hub.core.artifacts import open_store
from hub.core.db import make_engine
from hub.core.service import Owning, Periodic
from hub.core.settings import HubSettings
from hub.monitoring._report import MonitorReport
from hub.monitoring.publish import MqttAlertPublisher, alerts_topic
from hub.monitoring.service import AlertPublisher, MonitorConfig, evaluate
from hub.tables import create_all
from hub.tables.monitoring import Alert

if TYPE_CHECKING:
    from hub.core.artifacts import ArtifactStore

__all__ = ["MonitorLoop", "monitor_service"]

log = logging.getLogger("edgeloop.monitor")


class MonitorLoop(Periodic):
    """Calls :func:`evaluate` every ``interval_s`` until :meth:`stop` (a :class:`Service`)."""

    name = "monitor"

    def __init__(
        self,
        *,
        engine: Engine,
        interval_s: float,
        config: MonitorConfig | None = None,
        publisher: AlertPublisher | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        store: ArtifactStore | None = None,
        owns: Callable[[str, str], bool] | None = None,
    ) -> None:
        # at a fixed rate: a pass that took part of the interval does not delay the next
        super().__init__(
            interval_s=interval_s,
            log=log,
            thread_name="edgeloop-monitor",
            fixed_rate=True,
            what="monitoring evaluation",
        )
        self._engine, self._store = engine, store
        self._config, self._publisher, self._on_alert = config, publisher, on_alert
        self.last_report: MonitorReport | None = None
        #: (model, version) -> whether this replica evaluates it (None: every version)
        self.owns = owns

    def tick(self) -> None:
        self.last_report = evaluate(
            self._engine,
            config=self._config,
            publisher=self._publisher,
            on_alert=self._on_alert,
            store=self._store,
            owns=self.owns,
        )


def monitor_service(
    settings: HubSettings,
    *,
    mqtt_url: str | None,
    owns: Callable[[str, str], bool] | None = None,
    client_id: str = "edgeloop-hub-monitor",
) -> Owning:
    """The monitoring service (publishing alerts when a broker is known), not yet started.
    ``owns``: with several monitor replicas, the versions this one evaluates (the others'
    are left to them); ``client_id``: its alert publisher's MQTT session."""
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    publisher = None
    if mqtt_url:
        publisher = MqttAlertPublisher(
            url=mqtt_url,
            topic=alerts_topic(prefix=settings.topic_prefix, fleet=settings.fleet),
            client_id=client_id,
        )
    loop = MonitorLoop(
        engine=engine,
        interval_s=settings.monitor_interval_s,
        config=MonitorConfig.from_settings(settings),
        publisher=publisher,
        store=open_store(settings.resolved_artifact_url),
        owns=owns,
    )
    closers = [engine.dispose] if publisher is None else [publisher.close, engine.dispose]
    return Owning(loop, *closers)
