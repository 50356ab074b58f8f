"""The hub's gRPC server: ``ArtifactService`` (bundle downloads with resume) and
``DeviceService`` (enrolment) on ``server.GrpcService``; ``auth`` checks device client
certificates.
"""

from hub._lazy import submodules

__all__ = ["auth", "devices", "server"]


__getattr__ = submodules(__name__, __all__)
