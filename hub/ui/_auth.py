"""Dashboard sign-in: the API's own tokens, kept in an HttpOnly, SameSite=Strict cookie.

Browsers cannot send bearer headers on navigation, so a token is handed over once
(``/ui/login?token=...`` or the login form) and then travels as the ``edgeloop_ui`` cookie
(path ``/ui``). Every page, fragment and action re-checks it with
:func:`hub.security.api_tokens.scope_of`, so a revoked token stops working at once. Actions are POST
forms that carry a CSRF token: an HMAC of the cookie's token under the hub's admin token, so
it is tied to the cookie, needs no server-side state and survives restarts.

``hub serve`` also prints a one-time sign-in link (``/ui/login?code=...``): a random code
held in memory by :class:`OneTimeLogins`, good for one use within a few minutes, that
``/ui/login`` exchanges for the admin token's cookie. No long-lived secret is printed; once
used or expired the code is worth nothing (so it may show in the access log).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from hub.core.context import HubContext
from hub.core.errors import EdgeloopError, Forbidden, Unauthorized
from hub.security.api_tokens import authorize, scope_of
from hub.tables import TokenScope

COOKIE = "edgeloop_ui"
COOKIE_PATH = "/ui"
LOGIN_CODE_TTL_S = 15 * 60.0  # how long hub serve's one-time sign-in link works


class LoginRequired(EdgeloopError):
    """No valid token: pages redirect to the login form, fragments and actions answer 401."""

    code = "login_required"
    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UiUser:
    token: str
    scope: TokenScope
    csrf: str

    @property
    def can_act(self) -> bool:
        return self.scope is TokenScope.ADMIN


def csrf_for(context: HubContext, token: str) -> str:
    key = context.admin_token.encode()
    return hmac.new(key, b"edgeloop-ui-csrf\0" + token.encode(), hashlib.sha256).hexdigest()


def check_token(context: HubContext, token: str) -> UiUser:
    """The user a token stands for; LoginRequired when it is unknown or revoked."""
    try:
        scope = scope_of(context.engine, token=token, admin_token=context.admin_token)
    except Unauthorized as exc:
        raise LoginRequired(exc.message) from None
    return UiUser(token=token, scope=scope, csrf=csrf_for(context, token))


def current_user(request: Request) -> UiUser:
    """FastAPI dependency for every /ui page (GET)."""
    context: HubContext = request.app.state.hub
    token = request.cookies.get(COOKIE, "")
    if not token:
        raise LoginRequired("sign in with an API token")
    return check_token(context, token)


def _same_origin(request: Request) -> bool:
    """A present Origin (or Referer) must name this host: cross-site posts never act."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source is None
    return urlsplit(source).netloc == request.headers.get("host", "")


def require_action(request: Request, user: UiUser, *, csrf: str) -> None:
    """An action (POST) needs a same-origin request, the cookie's CSRF token and scope admin."""
    if not _same_origin(request) or not hmac.compare_digest(csrf.encode(), user.csrf.encode()):
        raise Forbidden("the form's CSRF token does not match this session; reload the page")
    context: HubContext = request.app.state.hub
    try:
        authorize(context.engine, token=user.token, admin_token=context.admin_token, method="POST")
    except Unauthorized as exc:
        raise LoginRequired(exc.message) from None


class OneTimeLogins:
    """Single-use, short-lived sign-in codes (in memory: a restart forgets them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}  # sha256 of a code -> monotonic deadline

    def issue(self, ttl_s: float = LOGIN_CODE_TTL_S) -> str:
        code = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            self._expiry[_digest(code)] = now + ttl_s
        return code

    def redeem(self, code: str) -> bool:
        """True once for a code issued less than its ttl ago; False ever after."""
        with self._lock:
            deadline = self._expiry.pop(_digest(code), None)
        return deadline is not None and deadline > time.monotonic()


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()
