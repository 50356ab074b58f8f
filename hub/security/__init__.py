"""Who may do what: device enrolment and revocation (``enrollment``, ``runtime.Security``),
device passwords (``passwords``) and client certificates (``client_certs``), admin API tokens
and scopes (``api_tokens``), the bundle signing keys (``keys``) and their rotation on devices
(``key_rotation``). Below ``mqtt``: the broker's access control reads what this package
writes; ``runtime.Security`` reaches the broker through the ``BrokerLogins`` protocol.
"""

import importlib
from types import ModuleType

__all__ = [
    "api_tokens",
    "client_certs",
    "enrollment",
    "key_rotation",
    "keys",
    "passwords",
    "runtime",
]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.security import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
