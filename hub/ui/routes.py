"""The dashboard's pages (GET, ``?fragment=1`` for the live part) and actions (POST forms)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

import hub
from hub.core.context import HubContext
from hub.core.db import session_scope
from hub.core.errors import EdgeloopError, NotFound
from hub.core.settings import TOKEN_FILE
from hub.ui import _filters, _fleet, _monitoring, _registry, _rollouts
from hub.ui._auth import (
    COOKIE,
    COOKIE_PATH,
    LOGIN_CODE_TTL_S,
    LoginRequired,
    OneTimeLogins,
    UiUser,
    check_token,
    current_user,
    require_action,
)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["hub_version"] = hub.__version__
templates.env.filters.update(when=_filters.when, short=_filters.short, bytes=_filters.size)
router = APIRouter(prefix="/ui", include_in_schema=False)
UserDep = Annotated[UiUser, Depends(current_user)]
LIVE_EVERY_MS = 3000


def _context(request: Request) -> HubContext:
    context: HubContext = request.app.state.hub
    return context


def _page(
    request: Request,
    user: UiUser,
    *,
    name: str,
    build: Callable[[Session], dict[str, Any]],
    title: str,
) -> Response:
    """``name.html`` (whole page) or ``name_body.html`` (the live fragment) from ``build``."""
    fragment = request.query_params.get("fragment") == "1"
    try:
        with session_scope(_context(request).engine) as session:
            data = build(session)
            response = templates.TemplateResponse(
                request,
                f"{name}_body.html" if fragment else f"{name}.html",
                {
                    "user": user,
                    "title": title,
                    "nav": name,
                    "live_every_ms": LIVE_EVERY_MS,
                    "done": request.query_params.get("done", ""),
                    "error": request.query_params.get("error", ""),
                    **data,
                },
            )
    except EdgeloopError as exc:
        return _error(request, user, exc)
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(request: Request, user: UiUser | None, exc: EdgeloopError) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"user": user, "title": "error", "nav": "", "message": exc.message, "code": exc.code},
        status_code=exc.status,
    )


# --- sign-in ------------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    return target if target.startswith("/ui/") and "//" not in target else "/ui/fleet"


def _signed_in(request: Request, token: str, target: str) -> Response:
    try:
        check_token(_context(request), token)
    except LoginRequired as exc:
        return _login_form(request, message=exc.reason, status_code=401)
    response = RedirectResponse(_safe_next(target), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _login_form(request: Request, *, message: str = "", status_code: int = 200) -> Response:
    return templates.TemplateResponse(
        request,
        "login.html",
        {
            "user": None,
            "title": "sign in",
            "nav": "",
            "message": message,
            "next": _safe_next(request.query_params.get("next", "")),
        },
        status_code=status_code,
    )


@router.get("", response_class=HTMLResponse, response_model=None)
@router.get("/", response_class=HTMLResponse, response_model=None)
def home() -> Response:
    return RedirectResponse("/ui/fleet", status_code=303)


@router.get("/login", response_class=HTMLResponse, response_model=None)
def login_page(request: Request, token: str = "", code: str = "", next: str = "") -> Response:
    if token:
        return _signed_in(request, token, next)
    if code:  # hub serve's one-time link: trades for the admin token's cookie
        logins: OneTimeLogins | None = getattr(request.app.state, "ui_logins", None)
        if logins is None or not logins.redeem(code):
            return _login_form(request, message=_spent_code(request), status_code=401)
        return _signed_in(request, _context(request).admin_token, next)
    return _login_form(request)


def _spent_code(request: Request) -> str:
    settings = _context(request).settings
    where = (
        "EDGELOOP_ADMIN_TOKEN"
        if settings.admin_token is not None
        else str(settings.data_dir / TOKEN_FILE)
    )
    return (
        "this sign-in link was used already or has expired (it works once, for "
        f"{LOGIN_CODE_TTL_S / 60:g} minutes): paste the admin token (in {where}) below"
    )


@router.post("/login", response_class=HTMLResponse, response_model=None)
def login(
    request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = ""
) -> Response:
    return _signed_in(request, token.strip(), next)


@router.post("/logout", response_model=None)
def logout(request: Request, user: UserDep, csrf: Annotated[str, Form()] = "") -> Response:
    if csrf != user.csrf:
        return _error(request, user, NotFound("no such session"))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


# --- pages --------------------------------------------------------------------------------


@router.get("/fleet", response_class=HTMLResponse, response_model=None)
def fleet(
    request: Request, user: UserDep, group: str = "", tag: str = "", status: str = "", q: str = ""
) -> Response:
    flt = _fleet.FleetFilter(group=group, tag=tag, status=status, q=q)
    return _page(
        request,
        user,
        name="fleet",
        title="fleet",
        build=lambda s: {"fleet": _fleet.fleet_view(s, flt=flt), "flt": flt},
    )


@router.get("/models", response_class=HTMLResponse, response_model=None)
def models(request: Request, user: UserDep) -> Response:
    return _page(
        request,
        user,
        name="models",
        title="model registry",
        build=lambda s: {"models": _registry.models_overview(s)},
    )


@router.get("/models/{name}/{version}", response_class=HTMLResponse, response_model=None)
def model_version(request: Request, user: UserDep, name: str, version: str) -> Response:
    return _page(
        request,
        user,
        name="model_version",
        title=f"{name}@{version}",
        build=lambda s: {"mv": _registry.version_detail(s, name=name, version=version)},
    )


@router.get("/datasets", response_class=HTMLResponse, response_model=None)
def datasets(request: Request, user: UserDep) -> Response:
    return _page(
        request,
        user,
        name="datasets",
        title="datasets",
        build=lambda s: {"datasets": _registry.datasets_overview(s)},
    )


@router.get("/datasets/{name}/{version}", response_class=HTMLResponse, response_model=None)
def dataset(request: Request, user: UserDep, name: str, version: str) -> Response:
    return _page(
        request,
        user,
        name="dataset",
        title=f"{name}@{version}",
        build=lambda s: {"ds": _registry.dataset_detail(s, ref=f"{name}@{version}")},
    )


@router.get("/rollouts", response_class=HTMLResponse, response_model=None)
def rollouts(request: Request, user: UserDep) -> Response:
    return _page(
        request,
        user,
        name="rollouts",
        title="rollouts",
        build=lambda s: {"rollouts": _rollouts.rollouts_overview(s)},
    )


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse, response_model=None)
def rollout(request: Request, user: UserDep, rollout_id: str) -> Response:
    return _page(
        request,
        user,
        name="rollout",
        title=f"rollout {rollout_id}",
        build=lambda s: {"ro": _rollouts.rollout_detail(s, rollout_id=rollout_id)},
    )


@router.post("/rollouts/{rollout_id}/{action}", response_model=None)
def rollout_action(
    request: Request,
    user: UserDep,
    rollout_id: str,
    action: str,
    csrf: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    try:
        require_action(request, user, csrf=csrf)
        if action not in _rollouts.ACTIONS:
            raise NotFound(f"no rollout action {action!r}; one of {sorted(_rollouts.ACTIONS)}")
    except EdgeloopError as exc:
        return _error(request, user, exc)
    target = f"/ui/rollouts/{quote(rollout_id)}"
    try:
        with session_scope(_context(request).engine) as session:
            _rollouts.act(
                session,
                rollout_id=rollout_id,
                action=action,
                reason=reason.strip() or f"dashboard ({user.scope.value} token)",
            )
    except EdgeloopError as exc:
        return RedirectResponse(f"{target}?error={quote(exc.message)}", status_code=303)
    return RedirectResponse(f"{target}?done={action}", status_code=303)


@router.get("/monitoring", response_class=HTMLResponse, response_model=None)
def monitoring(request: Request, user: UserDep, model: str = "", version: str = "") -> Response:
    return _page(
        request,
        user,
        name="monitoring",
        title="monitoring",
        build=lambda s: _monitoring.monitoring_view(s, model=model, version=version),
    )
