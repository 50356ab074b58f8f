"""The hub's foundation, imported by every other hub package and importing none of them:
settings (``HubSettings``, ``EDGELOOP_*``), the database engine (``db``), the error family
(``errors``: every hub exception derives from ``EdgeloopError``), the artifact store
(``artifacts``), the clock (``clock``), TLS files (``tls``), secret masking (``redact``), the
request context (``context``) and the ``Service`` protocol every background part implements
(``service``).
"""

from hub._lazy import submodules

__all__ = ["artifacts", "clock", "context", "db", "errors", "redact", "service", "settings", "tls"]


__getattr__ = submodules(__name__, __all__)
