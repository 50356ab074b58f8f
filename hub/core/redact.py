"""Credentials never shown: the one place that masks them in URLs, text and log lines.

Operators put passwords in URLs (``EDGELOOP_MQTT_URL=mqtt://hub:PASSWORD@broker:1883``,
``EDGELOOP_DATABASE_URL=postgresql://edgeloop:PASSWORD@db/edgeloop``), and the dashboard
sign-in link carries an API token (``/ui/login?token=...``). Everything that shows such a
value (``/healthz``, the ``hub serve`` banner, error messages, the access log) passes it
through :func:`redact_url` or :func:`redact_text` first.

>>> redact_url("mqtt://hub:s3cret@10.0.0.5:1884")
'mqtt://hub:***@10.0.0.5:1884'
>>> redact_url("postgresql://db.example/edgeloop?sslmode=require&password=s3cret")
'postgresql://db.example/edgeloop?sslmode=require&password=***'
>>> redact_url("mqtt://127.0.0.1:1883")
'mqtt://127.0.0.1:1883'
>>> redact_text("cannot reach mqtts://hub:p%40ss@broker:8883?ca_file=/ca.pem (refused)")
'cannot reach mqtts://hub:***@broker:8883?ca_file=/ca.pem (refused)'
>>> redact_text('"GET /ui/login?token=el_abc123&next=/ui/fleet HTTP/1.1" 303')
'"GET /ui/login?token=***&next=/ui/fleet HTTP/1.1" 303'
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = [
    "MASK",
    "RedactingFilter",
    "install_log_redaction",
    "redact_text",
    "redact_url",
    "redacting_log_config",
]

MASK = "***"

# scheme://user:PASSWORD@ -- the password is whatever runs up to the last "@" before the host
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'\"]*:)[^\s/?#'\"]*(?=@)")
# scheme://TOKEN@host (a bare secret as the user, as some brokers and services take it) is left:
# it cannot be told from a user name. Query parameters whose name says secret are masked.
_SECRET_PARAMS = (
    "password",
    "passwd",
    "pwd",
    "sslpassword",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "secret",
    # presigned object-store URLs: the signature is a bearer credential until it expires
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
)
_QUERY = re.compile(
    r"(?P<head>[?&;](?:" + "|".join(_SECRET_PARAMS) + r")=)[^&#\s'\"]*", re.IGNORECASE
)


def redact_text(text: str) -> str:
    """``text`` with every URL password and secret query parameter replaced by ``***``."""
    return _QUERY.sub(rf"\g<head>{MASK}", _USERINFO.sub(rf"\g<head>{MASK}", text))


def redact_url(url: str) -> str:
    """``url`` with its password (``user:PASSWORD@``) and secret query parameters masked;
    the scheme, user, host, port, path and the other parameters stay readable."""
    return redact_text(url)


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in a record's rendered message.

    Attached to the handlers ``hub serve`` logs through (uvicorn's access log included), so a
    line that names a URL with a password, or the dashboard's ``?token=`` link, is masked
    whatever code logged it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler's error path
            return True
        if redact_text(message) != message:
            # mask the arguments one by one first: formatters such as uvicorn's access log
            # read ``record.args`` themselves
            if isinstance(record.msg, str):
                record.msg = redact_text(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_masked(arg) for arg in record.args)
            elif isinstance(record.args, dict):
                record.args = {key: _masked(arg) for key, arg in record.args.items()}
            message = record.getMessage()
            if redact_text(message) != message:  # a secret in some object's str()
                record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(_FORMATTER.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


_FORMATTER = logging.Formatter()


def _masked(arg: object) -> object:
    return redact_text(arg) if isinstance(arg, str) else arg


def redacting_log_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``logging.config.dictConfig`` dict whose every handler has the filter."""
    out = {**config, "filters": {**config.get("filters", {}), "redact": {"()": RedactingFilter}}}
    out["handlers"] = {
        name: {**handler, "filters": [*handler.get("filters", []), "redact"]}
        for name, handler in config.get("handlers", {}).items()
    }
    return out


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger),
    once; call it after ``logging.basicConfig``."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
