"""One JSON error shape for every failure: ``{"error": message, "code": code}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from hub.artifacts import ArtifactCorrupt, ArtifactNotFound
from hub.errors import EdgeloopError

log = logging.getLogger("edgeloop.api")

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


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": "internal error; see the hub's log", "code": "internal"}, status_code=500
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(EdgeloopError, _edgeloop)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ArtifactNotFound, _artifact_missing)
    app.add_exception_handler(ArtifactCorrupt, _artifact_corrupt)
    app.add_exception_handler(Exception, _unexpected)
