"""Retention of every table that grows with traffic, with hourly roll-ups (``service``; the
``RetentionLoop`` ``hub serve`` runs).
"""

import importlib
from types import ModuleType

__all__ = ["service"]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.retention import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
