"""Runs and models: ``tracking`` (training runs, metrics, artifacts) and ``models`` (registered
models, numbered versions, aliases with their history, bundles per version, lineage).
"""

import importlib
from types import ModuleType

__all__ = ["models", "tracking"]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.registry import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
