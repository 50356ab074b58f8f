"""FastAPI dependencies, as ``Annotated`` aliases the routes use."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

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
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if credentials is None:
        raise Unauthorized(
            "this endpoint needs 'Authorization: Bearer <admin token>'; the dev-mode token is in "
            "DATA_DIR/admin_token, production sets EDGELOOP_ADMIN_TOKEN"
        )
    if not hmac.compare_digest(credentials.credentials.encode(), context.admin_token.encode()):
        raise Unauthorized("the bearer token is not valid for this hub")


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
