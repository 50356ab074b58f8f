"""The hub's gRPC server: ``ArtifactService`` (bundle downloads with resume) and
``DeviceService`` (enrolment) on ``server.GrpcService``; ``auth`` checks device client
certificates.
"""

import importlib
from types import ModuleType

__all__ = ["auth", "devices", "server"]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.rpc import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
