"""The admin REST API (FastAPI): ``create_app(settings)``; docs at ``/docs``."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

import hub
from hub.api import errors
from hub.api.deps import ContextDep, check_request, require_admin
from hub.api.public import HealthPublic
from hub.core.artifacts import open_store
from hub.core.context import HubContext
from hub.core.db import make_engine
from hub.core.settings import HubSettings
from hub.tables import create_all

__all__ = [
    "API_PREFIX",
    "COLLECTIONS",
    "ROUTE_MODULES",
    "SERVES",
    "create_app",
    "include_routes",
    "routes_for",
]

API_PREFIX = "/api/v1"

#: The admin API's route modules (``hub.api.routes.<name>``), in the order they are included.
ROUTE_MODULES = (
    "datasets",
    "runs",
    "models",
    "bundles",
    "devices",
    "training",
    "ingest",
    "monitor",
    "triggers",
    "rollouts",
    "security",
    "keys",
    "cluster",
)
#: The first path segment under ``/api/v1`` -> the route modules with routes under it (a test
#: checks it against every route), so the CLI's in-process API loads only what a command asks.
SERVES: dict[str, tuple[str, ...]] = {
    "datasets": ("datasets",),
    "runs": ("runs",),
    "models": ("models", "bundles", "training"),
    "bundles": ("bundles",),
    "devices": ("devices", "security"),
    "training-runs": ("training",),
    "ingest": ("ingest",),
    "monitor": ("monitor",),
    "triggers": ("triggers",),
    "rollouts": ("rollouts",),
    "enrollment-tokens": ("security",),
    "tokens": ("security",),
    "keys": ("keys",),
    "cluster": ("cluster",),
}


#: Where the collection itself (``/api/v1/<segment>``, nothing after it) has fewer modules
#: than the whole segment: the other modules' routes all sit deeper (``/models/{name}/...``),
#: so ``model list`` and ``device list`` build no bundle, training or credential routes.
COLLECTIONS: dict[str, tuple[str, ...]] = {
    "models": ("models",),
    "devices": ("devices",),
}


def routes_for(path: str) -> tuple[str, ...]:
    """The route modules serving ``path`` (under ``/api/v1``, with or without the prefix);
    every module for a path no entry of :data:`SERVES` names."""
    rest = path.removeprefix(API_PREFIX).lstrip("/").split("?", 1)[0]
    first, _, deeper = rest.partition("/")
    if not deeper.strip("/") and first in COLLECTIONS:
        return COLLECTIONS[first]
    return SERVES.get(first, ROUTE_MODULES)


def include_routes(app: FastAPI, names: Iterable[str]) -> None:
    """Import and include the route modules ``names`` not yet included, in
    :data:`ROUTE_MODULES` order (each behind the admin-token and request guards)."""
    wanted = set(names)
    included: set[str] = app.state.route_modules
    guarded = [Depends(require_admin), Depends(check_request)]
    for name in ROUTE_MODULES:
        if name in wanted and name not in included:
            module = importlib.import_module(f"hub.api.routes.{name}")
            app.include_router(
                module.router, prefix=API_PREFIX, dependencies=guarded, responses=errors.RESPONSES
            )
            included.add(name)


def create_app(
    settings: HubSettings,
    *,
    extra_health: Callable[[], dict[str, Any]] | None = None,
    dashboard: bool = True,
    routes: Iterable[str] | None = None,
) -> FastAPI:
    """An app on the settings' database and artifact store (tables created on start);
    ``dashboard``: with the web dashboard at ``/ui`` (the CLI's in-process API has none);
    ``routes``: only these route modules now (default: all; :func:`include_routes` adds
    more later: the CLI's in-process API includes what each request needs)."""
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

    app.state.route_modules = set()
    include_routes(app, ROUTE_MODULES if routes is None else routes)
    return app
