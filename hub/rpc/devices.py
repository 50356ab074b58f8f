"""``DeviceService.Enroll`` over gRPC: a device trades an enrolment token for credentials.

Errors: ``INVALID_ARGUMENT`` (bad device id, missing token), ``UNAUTHENTICATED`` (unknown
token), ``PERMISSION_DENIED`` (token expired, used up or revoked). With client
certificates on, the request's CSR is signed and the certificate returned (a missing or
unacceptable CSR is ``INVALID_ARGUMENT``). The answer comes once the
broker accepts the new login, so the device can connect right away. Tokens and passwords
are never logged.
"""

from __future__ import annotations

import logging

import grpc

from hub.core.errors import EdgeloopError, InvalidInput, Unauthorized
from hub.security.enrollment import EnrollmentRefused
from hub.security.runtime import Security
from proto import services_pb2, services_pb2_grpc

log = logging.getLogger(__name__)


class DeviceServicer(services_pb2_grpc.DeviceServiceServicer):
    def __init__(self, *, security: Security) -> None:
        self.security = security

    def Enroll(
        self, request: services_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> services_pb2.EnrollResponse:
        if not request.enrollment_token:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "enrollment_token is required")
        try:
            result = self.security.enroll(
                device_id=request.device_id,
                token=request.enrollment_token,
                capabilities=dict(request.capabilities),
                tags=dict(request.tags),
                wait=True,
                client_csr=request.client_csr or None,
            )
        except InvalidInput as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        except Unauthorized as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        except EnrollmentRefused as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, exc.message)
        except EdgeloopError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, exc.message)
        log.info("device %s enrolled over gRPC (rotated: %s)", result.device_id, result.rotated)
        return services_pb2.EnrollResponse(
            device_id=result.device_id,
            mqtt_username=result.mqtt_username,
            mqtt_password=result.mqtt_password,
            hub_public_key=result.hub_public_key,
            mqtt_url=result.mqtt_url,
            artifact_endpoint=result.artifact_endpoint,
            client_certificate=result.client_certificate,
            client_ca=result.client_ca,
        )
