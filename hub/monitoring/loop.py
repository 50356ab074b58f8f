"""The hub's monitoring loop: :func:`evaluate` every ``interval_s`` (from the start of one pass
to the next; a pass longer than that is followed at once), in a background thread.

``edgeloop hub serve`` runs one (``EDGELOOP_MONITOR_INTERVAL_S``, default 10 s; 0 turns it
off). A failing evaluation is logged and retried at the next tick, never fatal to the hub.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from hub.monitoring._report import MonitorReport
from hub.monitoring.service import AlertPublisher, MonitorConfig, evaluate
from hub.tables.monitoring import Alert

if TYPE_CHECKING:
    from hub.core.artifacts import ArtifactStore

log = logging.getLogger("edgeloop.monitor")


class MonitorLoop:
    """Calls :func:`evaluate` every ``interval_s`` until :meth:`stop`."""

    def __init__(
        self,
        *,
        engine: Engine,
        interval_s: float,
        config: MonitorConfig | None = None,
        publisher: AlertPublisher | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self._engine, self._interval, self._store = engine, interval_s, store
        self._config, self._publisher, self._on_alert = config, publisher, on_alert
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeloop-monitor", daemon=True)
        self.ticks = 0
        self.last_report: MonitorReport | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.last_report = evaluate(
                    self._engine,
                    config=self._config,
                    publisher=self._publisher,
                    on_alert=self._on_alert,
                    store=self._store,
                )
            except Exception:  # a database hiccup: try again next tick
                log.exception("monitoring evaluation failed")
            self.ticks += 1
            # at a fixed rate: a pass that took part of the interval does not delay the next
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))
