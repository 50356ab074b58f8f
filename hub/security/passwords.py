"""Device and hub passwords as Mosquitto stores them (``$7$`` PBKDF2-SHA512), and the client
id prefix reserved for the hub's own MQTT clients.

Enrolment (:mod:`hub.security.enrollment`) issues and hashes device passwords;
:mod:`hub.mqtt.auth` writes the hashes into the broker's password file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = [
    "HUB_CLIENT_ID_PREFIX",
    "PBKDF2_ITERATIONS",
    "hash_password",
    "new_password",
    "verify_password",
]

#: The hub's MQTT client ids (ingest, rollouts, monitor, probe) and its user start so; no
#: device may be enrolled under such an id (hub.security.enrollment).
HUB_CLIENT_ID_PREFIX = "edgeloop-"
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's ``$7$<iterations>$<salt b64>$<pbkdf2-sha512 b64>`` (12-byte salt)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (as Mosquitto checks it)."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        computed = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(computed, base64.b64decode(digest))
    except ValueError:
        return False


def new_password() -> str:
    return secrets.token_urlsafe(24)
