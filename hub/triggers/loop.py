"""The hub's trigger loop: evaluates every policy at an interval, in a background thread.

``edgeloop hub serve`` runs one (``EDGELOOP_TRIGGER_INTERVAL_S``, default 60 s; 0 turns it
off). Runs it starts are ordinary tracked training runs; a failing evaluation is logged and
retried at the next tick, never fatal to the hub.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

from hub.core.artifacts import ArtifactStore
from hub.tables import TriggerEvent
from hub.training.service import train
from hub.triggers.followup import Followup
from hub.triggers.service import Runner, run_triggers

log = logging.getLogger("edgeloop.triggers")


class TriggerLoop:
    """Calls :func:`run_triggers` every ``interval_s`` until :meth:`stop`."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: ArtifactStore,
        interval_s: float,
        runner: Runner = train,
        followup: Followup | None = None,
    ) -> None:
        self._engine, self._store, self._interval = engine, store, interval_s
        self._runner, self._followup = runner, followup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeloop-triggers", daemon=True)
        self.ticks = 0
        self.events: list[TriggerEvent] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                started = run_triggers(
                    self._engine, self._store, runner=self._runner, followup=self._followup
                )
                self.events.extend(started)
                for event in started:
                    log.info("trigger %s for %s: %s", event.kind, event.model_name, event.status)
            except Exception:  # a broken policy or a database hiccup: try again next tick
                log.exception("trigger evaluation failed")
            self.ticks += 1
            self._stop.wait(self._interval)
