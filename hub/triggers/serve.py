"""The hub's trigger service: evaluates every policy at an interval, in a background thread.

``edgeloop hub serve`` runs one (``EDGELOOP_TRIGGER_INTERVAL_S``, default 60 s; 0 turns it
off). Runs it starts are ordinary tracked training runs; a failing evaluation is logged and
retried at the next tick, never fatal to the hub.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine

from hub.core.artifacts import ArtifactStore, open_store
from hub.core.db import make_engine
from hub.core.service import Owning, Periodic, ServiceHealth
from hub.core.settings import HubSettings
from hub.security.keys import bundle_signing_key
from hub.tables import TriggerEvent, create_all
from hub.training.service import train
from hub.triggers.followup import Followup, PackageAndCanary
from hub.triggers.service import Runner, run_triggers

__all__ = ["TriggerLoop", "trigger_service"]

log = logging.getLogger("edgeloop.triggers")


class TriggerLoop(Periodic):
    """Calls :func:`run_triggers` every ``interval_s`` until :meth:`stop` (a Service)."""

    name = "triggers"

    def __init__(
        self,
        *,
        engine: Engine,
        store: ArtifactStore,
        interval_s: float,
        runner: Runner = train,
        followup: Followup | None = None,
    ) -> None:
        # a broken policy or a database hiccup is logged and tried again at the next tick
        super().__init__(
            interval_s=interval_s,
            log=log,
            thread_name="edgeloop-triggers",
            what="trigger evaluation",
        )
        self._engine, self._store = engine, store
        self._runner, self._followup = runner, followup
        self.events: list[TriggerEvent] = []

    def health(self) -> ServiceHealth:
        return {**super().health(), "runs_started": len(self.events)}

    def tick(self) -> None:
        started = run_triggers(
            self._engine, self._store, runner=self._runner, followup=self._followup
        )
        self.events.extend(started)
        for event in started:
            log.info("trigger %s for %s: %s", event.kind, event.model_name, event.status)


def trigger_service(settings: HubSettings) -> Owning:
    """The trigger service ``hub serve`` runs (own engine), not yet started. A retrained
    version is packaged and canaried when its policy says so."""
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    loop = TriggerLoop(
        engine=engine,
        store=open_store(settings.resolved_artifact_url),
        interval_s=settings.trigger_interval_s,
        followup=PackageAndCanary(signing_key=lambda: bundle_signing_key(settings)),
    )
    return Owning(loop, engine.dispose)
