"""The hub's foundation, imported by every other hub package and importing none of them:
settings (``HubSettings``, ``EDGELOOP_*``), the database engine (``db``), the error family
(``errors``: every hub exception derives from ``EdgeloopError``), the artifact store
(``artifacts``), the clock (``clock``), TLS files (``tls``), secret masking (``redact``), the
request context (``context``) and the ``Service`` protocol every background part implements
(``service``).
"""

import importlib
from types import ModuleType

__all__ = ["artifacts", "clock", "context", "db", "errors", "redact", "service", "settings", "tls"]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.core import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
