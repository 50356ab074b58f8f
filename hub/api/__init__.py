"""The admin REST API (FastAPI): ``create_app(settings)``; docs at ``/docs``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

import hub
from hub.api import errors
from hub.api.deps import ContextDep, check_request, require_admin
from hub.api.public import HealthPublic
from hub.api.routes import bundles, datasets, devices, models, runs, training
from hub.api.routes import ingest as ingest_routes
from hub.api.routes import keys as key_routes
from hub.api.routes import monitor as monitor_routes
from hub.api.routes import rollouts as rollout_routes
from hub.api.routes import security as security_routes
from hub.api.routes import triggers as trigger_routes
from hub.core.artifacts import open_store
from hub.core.context import HubContext
from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.tables import create_all

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/v1"


def create_app(
    settings: HubSettings,
    *,
    extra_health: Callable[[], dict[str, Any]] | None = None,
    dashboard: bool = True,
) -> FastAPI:
    """An app on the settings' database and artifact store (tables created on start);
    ``dashboard``: with the web dashboard at ``/ui`` (the CLI's in-process API has none)."""
    engine = make_engine(settings.resolved_database_url)
    context = HubContext(
        settings=settings,
        engine=engine,
        store=open_store(settings.resolved_artifact_url),
        admin_token=settings.resolved_admin_token(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        create_all(engine)
        yield
        engine.dispose()

    app = FastAPI(
        title="edgeloop hub",
        version=hub.__version__,
        description="Admin API: datasets, runs, model registry, bundles, devices. "
        "Every /api route needs 'Authorization: Bearer <admin token>'.",
        lifespan=lifespan,
    )
    app.state.hub = context
    errors.install(app)
    if dashboard:
        from hub import ui

        ui.install(app)  # the dashboard at /ui (hub/ui)

    @app.get(
        "/healthz", tags=["health"], response_model=HealthPublic, response_model_exclude_none=True
    )
    def healthz(ctx: ContextDep) -> HealthPublic:
        with ctx.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return HealthPublic(
            status="ok",
            version=hub.__version__,
            database=ctx.engine.dialect.name,
            **(extra_health() if extra_health else {}),
        )

    guarded = [Depends(require_admin), Depends(check_request)]
    for router in (
        datasets.router,
        runs.router,
        models.router,
        bundles.router,
        devices.router,
        training.router,
        ingest_routes.router,
        monitor_routes.router,
        trigger_routes.router,
        rollout_routes.router,
        security_routes.router,
        key_routes.router,
    ):
        app.include_router(
            router, prefix=API_PREFIX, dependencies=guarded, responses=errors.RESPONSES
        )

    return app
