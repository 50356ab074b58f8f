"""A registered version becomes a signed bundle (``service.package``): ONNX export, int8 behind
the accuracy gate, TFLite, measurements, the reference profile, lineage. Above ``training``:
it loads the trained model artifact.
"""

import importlib
from types import ModuleType

__all__ = ["service"]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.packaging import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
