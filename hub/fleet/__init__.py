"""The devices the hub knows (``devices``: registry CRUD) and the commands it sends them over
MQTT (``commands.CommandPublisher``, shared by rollouts and key rotation).
"""

import importlib
from types import ModuleType

__all__ = ["commands", "devices"]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.fleet import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
