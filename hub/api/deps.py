"""FastAPI dependencies, as ``Annotated`` aliases the routes use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from hub.core.artifacts import ArtifactStore
from hub.core.context import HubContext
from hub.core.db import session_scope
from hub.core.errors import InvalidInput, Unauthorized
from hub.security.api_tokens import authorize
from hub.tables.devices import DEVICE_ID_PATTERN


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


# Path parameters: the OpenAPI document states exactly what each accepts (FastAPI enforces the
# same pattern, so a malformed name is a 422 before any lookup, and never reaches the database).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
VERSION_PATTERN = r"^(latest|[0-9]{1,9})$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
SELECTOR_PATTERN = r"^(latest|[0-9]{1,9}|[a-z][a-z0-9_-]{0,63})$"
HEX_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_ID = 2**31 - 1  # row ids, version numbers, counts: PostgreSQL `integer` columns
MAX_SIZE = 2**53 - 1  # byte sizes (`bigint` columns): the largest integer JSON reads exactly

NamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="letters, digits, _ . -")]
VersionPath = Annotated[str, Path(pattern=VERSION_PATTERN, description="a number or 'latest'")]
SelectorPath = Annotated[
    str, Path(pattern=SELECTOR_PATTERN, description="a version number, 'latest' or an alias")
]
AliasPath = Annotated[str, Path(pattern=ALIAS_PATTERN, description="lower-case alias name")]
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="a device id")]
HexIdPath = Annotated[str, Path(pattern=HEX_ID_PATTERN, description="a 32-hex id")]
RowIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="a row id")]
RolloutIdPath = Annotated[str, Path(pattern=r"^ro-[0-9a-f]{12}$", description="a rollout id")]


def check_request(request: Request) -> None:
    """What the schema says that FastAPI does not enforce by itself:
    a query parameter the route does not declare is refused (422), not silently ignored: a
    typo (``?only_gap=true``) would otherwise answer as if no filter had been asked for.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is not None:
        known: set[str] = set()
        pending = [dependant]
        while pending:
            current = pending.pop()
            known.update(p.alias for p in current.query_params)
            pending.extend(current.dependencies)
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise InvalidInput(
                f"unknown query parameter(s) {unknown}; this endpoint takes "
                f"{sorted(known) or 'none'}"
            )
