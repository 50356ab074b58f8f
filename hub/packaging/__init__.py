"""A registered version becomes a signed bundle (``service.package``): ONNX export, int8 behind
the accuracy gate, TFLite, measurements, the reference profile, lineage. Above ``training``:
it loads the trained model artifact.
"""

from hub._lazy import submodules

__all__ = ["service"]


__getattr__ = submodules(__name__, __all__)
