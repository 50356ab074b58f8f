"""The hub's gRPC server: ``ArtifactService`` (bundle downloads with resume) and
``DeviceService`` (enrolment) on ``server.GrpcService``; ``auth`` checks device client
certificates.
"""

from hub.rpc import auth, devices, server

__all__ = ["auth", "devices", "server"]
