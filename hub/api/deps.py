"""FastAPI dependencies, as ``Annotated`` aliases the routes use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from hub.api_tokens import authorize
from hub.artifacts import ArtifactStore
from hub.db import session_scope
from hub.errors import Unauthorized
from hub.settings import HubSettings


@dataclass(frozen=True, slots=True)
class HubContext:
    """What every request may need; built once per app."""

    settings: HubSettings
    engine: Engine
    store: ArtifactStore
    admin_token: str


def get_context(request: Request) -> HubContext:
    context: HubContext = request.app.state.hub
    return context


ContextDep = Annotated[HubContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    with session_scope(context.engine) as session:
        yield session


def get_store(context: ContextDep) -> ArtifactStore:
    return context.store


_bearer = HTTPBearer(auto_error=False, description="admin token (EDGELOOP_ADMIN_TOKEN)")


def require_admin(
    request: Request,
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """A valid bearer token whose scope allows the method (``read``: GET; ``admin``: all)."""
    if credentials is None:
        raise Unauthorized(
            "this endpoint needs 'Authorization: Bearer <admin token>'; the dev-mode token is in "
            "DATA_DIR/admin_token, production sets EDGELOOP_ADMIN_TOKEN"
        )
    authorize(
        context.engine,
        token=credentials.credentials,
        admin_token=context.admin_token,
        method=request.method,
    )


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
