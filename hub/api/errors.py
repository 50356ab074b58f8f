"""One JSON error shape for every failure: ``{"error": message, "code": code}``."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.core.artifacts import ArtifactCorrupt, ArtifactNotFound
from hub.core.errors import EdgeloopError

log = logging.getLogger("edgeloop.api")


class ProblemPublic(BaseModel):
    where: str = Field(description="the request part, e.g. body.source or path.name")
    problem: str


class ErrorPublic(BaseModel):
    """The one error shape: every 4xx/5xx answer of the API has this body."""

    error: str = Field(description="what went wrong and what to do next")
    code: str = Field(description="stable machine-readable code, e.g. not_found, invalid_input")
    details: list[ProblemPublic] | dict[str, Any] | None = Field(
        default=None, description="invalid_request: one entry per problem; else domain details"
    )


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorPublic, "description": description}


# Declared once for every /api route (create_app passes it to include_router): any route may
# answer these; success codes and bodies are declared on the route itself.
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("the body could not be parsed"),
    401: _error("no or an unknown bearer token"),
    403: _error("the token's scope does not allow this method"),
    404: _error("the resource (or one it refers to) does not exist"),
    409: _error("the request conflicts with the current state"),
    413: _error("the body is larger than the hub accepts"),
    422: _error("the request is invalid: invalid_request (shape) or a domain code"),
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def _edgeloop(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EdgeloopError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)


def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "where": ".".join(str(part) for part in err.get("loc", ())),
            "problem": err.get("msg", ""),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{p['where']}: {p['problem']}" for p in problems[:5])
    return JSONResponse(
        {"error": f"invalid request: {summary}", "code": "invalid_request", "details": problems},
        status_code=422,
    )


def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": str(exc.detail), "code": code},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def _artifact_missing(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc), "code": "not_found"}, status_code=404)


def _artifact_corrupt(_: Request, exc: Exception) -> JSONResponse:
    log.error("corrupt artifact: %s", exc)
    return JSONResponse({"error": str(exc), "code": "artifact_corrupt"}, status_code=500)


def _nul_refused(exc: BaseException | None) -> bool:
    """PostgreSQL text cannot hold NUL (SQLite can): the input's fault, not the hub's."""
    while exc is not None:
        if "cannot contain NUL" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _database(request: Request, exc: Exception) -> JSONResponse:
    if _nul_refused(exc):
        return JSONResponse(
            {"error": "text must not contain a NUL character (\\u0000)", "code": "invalid_input"},
            status_code=422,
        )
    return _unexpected(request, exc)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    psycopg = sys.modules.get("psycopg")  # imported where PostgreSQL is used, not here (0.1 s)
    if psycopg is not None and isinstance(exc, psycopg.DataError) and _nul_refused(exc):
        return _database(request, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": "internal error; see the hub's log", "code": "internal"}, status_code=500
    )


@dataclass(frozen=True, slots=True)
class _PathMethods:
    pattern: re.Pattern[str]
    concreteness: tuple[int, ...]
    methods: frozenset[str]


def _operations(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path template, methods) of each documented route, from the routers as declared.
    FastAPI keeps an included router as a lazy wrapper (``original_router`` +
    ``include_context``); anything else unknown raises :class:`LookupError`."""
    for route in routes:
        if isinstance(route, APIRoute):
            if route.include_in_schema:
                yield prefix + route.path_format, set(route.methods or ())
            continue
        router = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if router is not None and context is not None:
            if context.include_in_schema:
                yield from _operations(router.routes, prefix + context.prefix)
        elif not isinstance(route, Mount | Route):  # docs pages and static files: no schema
            raise LookupError(f"unknown route type {type(route).__name__}")


def _documented_paths(app: FastAPI) -> list[_PathMethods]:
    """The paths and methods of the OpenAPI document, read from the routes it is made of:
    building the document, or FastAPI's per-route contexts, takes 0.3-1 s on the first
    request of every process (each in-process CLI command)."""
    operations: dict[str, set[str]] = {}
    try:
        for template, methods in _operations(app.routes):
            operations.setdefault(template, set()).update(methods)
    except LookupError:  # a FastAPI that wraps routes otherwise: its own (slower) walk
        operations.clear()
        for context in iter_route_contexts(app.routes):
            path, declared = context.path_format, context.methods
            if isinstance(context.original_route, APIRoute) and context.include_in_schema:
                operations.setdefault(path or "", set()).update(declared or ())
    found = []
    for template, methods in operations.items():
        parts = template.strip("/").split("/")
        regex = "/".join("[^/]+" if "{" in part else re.escape(part) for part in parts)
        found.append(
            _PathMethods(
                pattern=re.compile(f"^/{regex}/?$"),
                concreteness=tuple(int("{" in part) for part in parts),
                methods=frozenset(m.upper() for m in methods),
            )
        )
    return found


class MethodNotAllowed:
    """405 with an ``Allow`` header naming exactly the methods the OpenAPI document lists for
    the path, matched as OpenAPI matches paths: a concrete path (``.../aliases/history``)
    before a templated one (``.../aliases/{alias}``). Without it, ``PUT .../aliases/history``
    set an alias called ``history``, ``GET .../versions/upload`` looked up a version called
    ``upload``, and ``Allow`` named the methods of one route only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._paths: list[_PathMethods] | None = None
        self._routes = 0  # how many routes the app had when _paths was read (they may grow)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        routes = len(scope["app"].routes)
        if self._paths is None or routes != self._routes:
            self._paths, self._routes = _documented_paths(scope["app"]), routes
        path = scope["path"]
        matching = [p for p in self._paths if p.pattern.match(path)]
        if matching:
            best = min(p.concreteness for p in matching)
            allowed = {m for p in matching if p.concreteness == best for m in p.methods}
            if scope["method"] not in allowed:
                response = JSONResponse(
                    {"error": "Method Not Allowed", "code": "method_not_allowed"},
                    status_code=405,
                    headers={"Allow": ", ".join(sorted(allowed))},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_middleware(MethodNotAllowed)
    app.add_exception_handler(EdgeloopError, _edgeloop)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ArtifactNotFound, _artifact_missing)
    app.add_exception_handler(ArtifactCorrupt, _artifact_corrupt)
    app.add_exception_handler(DBAPIError, _database)
    app.add_exception_handler(Exception, _unexpected)
