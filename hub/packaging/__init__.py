"""A registered version becomes a signed bundle (``service.package``): ONNX export, int8 behind
the accuracy gate, TFLite, measurements, the reference profile, lineage. Above ``training``:
it loads the trained model artifact.
"""

from hub.packaging import service

__all__ = ["service"]
