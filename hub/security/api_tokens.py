"""Admin-API bearer tokens with scopes: ``read`` may GET, ``admin`` may change state.

The bootstrap admin token (``EDGELOOP_ADMIN_TOKEN``, or the dev-mode file) always has
``admin``. Further tokens live in the ``api_token`` table as SHA-256 hashes; the token
itself is shown once, at creation. Revoked tokens stop working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.core.clock import utcnow
from hub.core.errors import Forbidden, NotFound, Unauthorized
from hub.tables import ApiToken, ApiTokenCreate, TokenScope

TOKEN_PREFIX = "elk_"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, spec: ApiTokenCreate) -> tuple[ApiToken, str]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(token_hash=_hash(token), name=spec.name, scope=spec.scope.value)
    session.add(row)
    session.flush()
    return row, token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.id))).all())


def revoke_token(session: Session, *, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no API token {token_id} (list them with: edgeloop token list)")
    row.revoked_at = row.revoked_at or utcnow()
    session.add(row)
    session.flush()
    return row


def scope_of(engine: Engine, *, token: str, admin_token: str) -> TokenScope:
    """The scope ``token`` grants; Unauthorized when it grants nothing."""
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return TokenScope.ADMIN
    if not token.startswith(TOKEN_PREFIX):
        raise Unauthorized("the bearer token is not valid for this hub")
    with Session(engine) as session:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == _hash(token))).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("the bearer token is not valid for this hub (unknown or revoked)")
    return TokenScope(row.scope)


def authorize(engine: Engine, *, token: str, admin_token: str, method: str) -> TokenScope:
    """Allow ``method`` for ``token`` or raise Unauthorized (401) / Forbidden (403)."""
    scope = scope_of(engine, token=token, admin_token=admin_token)
    if scope is TokenScope.ADMIN or method.upper() in READ_METHODS:
        return scope
    raise Forbidden(
        f"this token has scope {scope.value!r}: it may read (GET) but {method.upper()} needs "
        "'admin' (edgeloop token create --scope admin)"
    )
