"""The hub's web dashboard at ``/ui``: server-rendered pages (Jinja2), a little plain JS.

``install(app)`` adds the pages, the static files and the sign-in redirect to an app made by
:func:`hub.api.create_app`. See docs/ARCHITECTURE.md, section "Dashboard".
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from hub.ui._auth import LOGIN_CODE_TTL_S, LoginRequired, OneTimeLogins

__all__ = ["LOGIN_CODE_TTL_S", "install", "login_link"]


def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    if request.method == "GET" and request.query_params.get("fragment") != "1":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
    return PlainTextResponse(exc.reason, status_code=401)


def install(app: FastAPI) -> None:
    from hub.ui.routes import router

    app.mount(
        "/ui/static",
        StaticFiles(directory=str(Path(__file__).parent / "static")),
        name="ui-static",
    )
    app.include_router(router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.state.ui_logins = OneTimeLogins()


def login_link(app: FastAPI, base_url: str, *, ttl_s: float = LOGIN_CODE_TTL_S) -> str:
    """A one-time dashboard sign-in link (``/ui/login?code=...``) for an app with the
    dashboard installed: it works once, within ``ttl_s``, and signs in as admin."""
    logins: OneTimeLogins = app.state.ui_logins
    return f"{base_url.rstrip('/')}/ui/login?code={logins.issue(ttl_s)}"
