"""Who may do what: device enrolment and revocation (``enrollment``, ``runtime.Security``),
device passwords (``passwords``) and client certificates (``client_certs``), admin API tokens
and scopes (``api_tokens``), the bundle signing keys (``keys``) and their rotation on devices
(``key_rotation``). Below ``mqtt``: the broker's access control reads what this package
writes; ``runtime.Security`` reaches the broker through the ``BrokerLogins`` protocol.
"""

from hub._lazy import submodules

__all__ = [
    "api_tokens",
    "client_certs",
    "enrollment",
    "key_rotation",
    "keys",
    "passwords",
    "runtime",
]


__getattr__ = submodules(__name__, __all__)
