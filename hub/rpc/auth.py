"""Device client certificates on the hub's gRPC server (``EDGELOOP_MQTT_CLIENT_CERTS``).

With client certificates on, bundle downloads (``ArtifactService``) need a certificate the
hub's **device CA** signed (:mod:`hub.security.client_certs`), while enrolment (``DeviceService``)
must stay open: that is how a device gets its certificate. grpc Python cannot ask for a
client certificate without requiring it (``ssl_server_credentials(require_client_auth=
False)`` does not request one at all), so the server listens twice:

* ``grpc_port``: TLS, no client certificate asked for; enrolment works, artifact calls are
  refused (``UNAUTHENTICATED``, naming the port to use);
* ``grpc_mtls_port``: TLS that **requires** a client certificate verified against the
  device CA (a missing or foreign one fails the handshake); this is the artifact endpoint
  devices are given at enrolment and in deploy commands.

On both ports :class:`DeviceCertInterceptor` lets only :data:`OPEN_METHODS` through
without a certificate; every other method (today ``Stat`` and ``Download``; any added
later too) needs the peer certificate's serial in ``device_certificate``, issued to the
certificate's CN and not revoked. So a revoked or replaced certificate is refused at its
next call, without waiting for a CRL reload (one indexed lookup per call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlmodel import Session

from hub.tables import DeviceCertificate

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from hub.core.tls import TlsFiles

log = logging.getLogger(__name__)

#: Methods served without a client certificate: enrolment hands out the certificate.
OPEN_METHODS = frozenset({"/edgeloop.v1.DeviceService/Enroll"})


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("grpc context.abort returned")  # pragma: no cover


@dataclass(frozen=True, kw_only=True)
class DeviceCertAuth:
    """Where device certificates are checked: the device CA file and the hub's database.

    ``port``: the listener that requires a client certificate (0: a free one).
    """

    ca_file: Path
    engine: Engine
    port: int = 0

    def server_credentials(self, tls: TlsFiles) -> grpc.ServerCredentials:
        """TLS with ``tls``'s key pair that requires a client certificate the device CA signed."""
        pair = (tls.key_file.read_bytes(), tls.cert_file.read_bytes())
        return grpc.ssl_server_credentials(
            [pair], root_certificates=self.ca_file.read_bytes(), require_client_auth=True
        )

    def authorize(self, context: grpc.ServicerContext) -> str:
        """The device id of the caller's verified certificate; aborts the call otherwise."""
        # (a list of PEMs at run time; grpc-stubs types the values as bytes)
        pems: Any = context.auth_context().get("x509_pem_cert")
        if not pems:
            _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "this hub serves bundles only to devices with a client certificate: connect "
                "to the artifact endpoint given at enrolment (the gRPC port that requires the "
                "device certificate, EDGELOOP_GRPC_MTLS_PORT) with the enrolment's "
                "client.pem/client.key",
            )
        cert = x509.load_pem_x509_certificate(bytes(pems[0]))
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        device_id = str(names[0].value) if names else ""
        serial = format(cert.serial_number, "x")
        with Session(self.engine) as session:
            row = session.get(DeviceCertificate, serial)
        if row is None or row.device_id != device_id:
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate {serial} (CN={device_id!r}) is not a device certificate this "
                "hub issued",
            )
        if row.revoked_at is not None:
            log.info("artifact call with revoked certificate %s of %s refused", serial, device_id)
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate of device {device_id!r} was revoked (device revoked or "
                "re-enrolled since): enrol again for a new one",
            )
        return device_id


class DeviceCertInterceptor(grpc.ServerInterceptor):
    """Runs ``authorize(context)`` before every method except :data:`OPEN_METHODS`."""

    def __init__(self, authorize: Callable[[grpc.ServicerContext], object]) -> None:
        self._authorize = authorize

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_METHODS:
            return handler
        return _guarded(handler, self._authorize)


def _guarded(
    handler: grpc.RpcMethodHandler, authorize: Callable[[grpc.ServicerContext], object]
) -> grpc.RpcMethodHandler:
    """``handler`` with ``authorize`` run first, for each of the four call shapes."""
    h: Any = handler
    shape = {
        "request_deserializer": h.request_deserializer,
        "response_serializer": h.response_serializer,
    }
    if h.unary_unary is not None:
        uu = h.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            authorize(context)
            return uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **shape)
    if h.unary_stream is not None:
        us = h.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            authorize(context)
            yield from us(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **shape)
    if h.stream_unary is not None:
        su = h.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            authorize(context)
            return su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **shape)
    ss = h.stream_stream

    def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        authorize(context)
        yield from ss(requests, context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **shape)
