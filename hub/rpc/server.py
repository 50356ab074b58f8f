"""The hub's gRPC server: agents fetch model bundles here (``ArtifactService``).

``Download`` streams an artifact from a byte offset, so an agent whose transfer broke
calls again with the number of bytes it already has. Every chunk carries its offset,
the artifact's total size and digest; the client verifies the assembled digest.
``DeviceService`` (enrolment, ``hub.rpc.devices``) is served when passed in. With device
client certificates on (:mod:`hub.rpc.auth`) a second port requires one, and artifact
calls without one are refused.

Downloads are admitted by :class:`hub.rpc.slots.DownloadSlots`: as many streams at once as
the server has worker threads for (less a few reserved); one beyond is refused at once with
``RESOURCE_EXHAUSTED`` and a ``retry-after-ms`` hint instead of waiting unserved inside
gRPC. ``Capacity`` reports the slots (the rollout controller admits deploys by them).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, Required, TypedDict, Unpack

import grpc

from hub.core.artifacts import ArtifactNotFound, ArtifactStore
from hub.rpc.auth import DeviceCertAuth, DeviceCertInterceptor
from hub.rpc.slots import RETRY_AFTER_KEY, DownloadSlots, SlotsSnapshot, stream_capacity
from proto import services_pb2, services_pb2_grpc

if TYPE_CHECKING:
    from hub.core.tls import TlsFiles

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256 * 1024
#: Worker threads of the hub's gRPC server: 128 download streams at once plus the reserve
#: (:data:`hub.rpc.slots.RESERVED_WORKERS`). A thread mostly waits for its client to read.
DEFAULT_MAX_WORKERS = 132
#: Largest chunk sent: 4 MiB less room for the other fields and framing, so one chunk
#: fits the 4 MiB receive limit every gRPC client has by default.
MAX_CHUNK_SIZE = 4 * 1024 * 1024 - 4 * 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("grpc context.abort returned")  # pragma: no cover


def _check_digest(digest: str, context: grpc.ServicerContext) -> None:
    if not _DIGEST.fullmatch(digest):
        _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"digest {digest!r} is not 'sha256:' followed by 64 lowercase hex digits",
        )


class ArtifactServicer(services_pb2_grpc.ArtifactServiceServicer):
    """Serves blobs of an :class:`~hub.core.artifacts.ArtifactStore` by digest, at most
    ``slots.capacity`` downloads at once."""

    def __init__(self, *, store: ArtifactStore, slots: DownloadSlots | None = None) -> None:
        self.store = store
        self.slots = slots or DownloadSlots(stream_capacity(DEFAULT_MAX_WORKERS))

    def _size(self, digest: str, context: grpc.ServicerContext) -> int:
        _check_digest(digest, context)
        try:
            return self.store.stat(digest).size
        except ArtifactNotFound:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no artifact {digest} on this hub")

    def Stat(
        self, request: services_pb2.StatRequest, context: grpc.ServicerContext
    ) -> services_pb2.ArtifactInfo:
        size = self._size(request.digest, context)
        return services_pb2.ArtifactInfo(digest=request.digest, size=size)

    def Capacity(
        self, request: services_pb2.CapacityRequest, context: grpc.ServicerContext
    ) -> services_pb2.DownloadCapacity:
        now = self.slots.snapshot()
        return services_pb2.DownloadCapacity(
            capacity=now.capacity,
            in_flight=now.in_flight,
            mean_stream_s=now.mean_stream_s,
            served=now.served,
            refused=now.refused,
        )

    def Download(
        self, request: services_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[services_pb2.DownloadChunk]:
        if not self.slots.try_acquire():
            wait = self.slots.snapshot().retry_after_s
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(round(wait * 1000))),))
            _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {self.slots.capacity} download slots are busy: retry in {wait:.2f} s",
            )
        started, once = time.monotonic(), threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):
                self.slots.release(started)

        # the slot is free when the call ends, whether or not gRPC finishes this generator
        # (a client that cancels mid-stream)
        context.add_callback(release)
        try:
            yield from self._download(request, context)
        finally:
            release()

    def _download(
        self, request: services_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[services_pb2.DownloadChunk]:
        digest = request.digest
        total = self._size(digest, context)
        offset = request.offset
        if offset > total:
            _abort(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {offset} is past the end of artifact {digest} ({total} bytes)",
            )
        chunk_size = min(request.chunk_size or DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE)
        if offset == total:
            # Nothing left, but the client still learns the size and digest.
            yield services_pb2.DownloadChunk(
                offset=offset, data=b"", total_size=total, digest=digest
            )
            return
        try:
            fh = self.store.open(digest)
        except ArtifactNotFound:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no artifact {digest} on this hub")
        with fh:
            _seek(fh, offset)
            while offset < total:
                if not context.is_active():
                    log.info("download of %s cancelled by the client at %d", digest, offset)
                    return
                data = fh.read(min(chunk_size, total - offset))
                if not data:
                    _abort(
                        context,
                        grpc.StatusCode.DATA_LOSS,
                        f"artifact {digest} ended at {offset} of {total} bytes",
                    )
                yield services_pb2.DownloadChunk(
                    offset=offset, data=data, total_size=total, digest=digest
                )
                offset += len(data)


def _seek(fh: BinaryIO, offset: int) -> None:
    """Position ``fh`` at ``offset``, also for streams that cannot seek."""
    if fh.seekable():
        fh.seek(offset)
        return
    left = offset
    while left:
        skipped = fh.read(min(left, MAX_CHUNK_SIZE))
        if not skipped:
            return  # short file: the read loop reports it
        left -= len(skipped)


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}"


@dataclass(frozen=True)
class GrpcListening:
    """A started gRPC server and its ports.

    ``mtls_port``: the listener that requires a device client certificate (client
    certificates on, :mod:`hub.rpc.auth`); None otherwise.
    """

    server: grpc.Server
    port: int
    mtls_port: int | None = None
    slots: DownloadSlots | None = None

    @property
    def artifact_port(self) -> int:
        """The port devices download bundles from."""
        return self.mtls_port if self.mtls_port is not None else self.port


class GrpcOptions(TypedDict, total=False):
    """:func:`serve_grpc`'s arguments, for :class:`GrpcService`."""

    store: Required[ArtifactStore]
    host: Required[str]
    port: Required[int]
    max_workers: int
    devices: services_pb2_grpc.DeviceServiceServicer | None
    tls: TlsFiles | None
    device_certs: DeviceCertAuth | None


class GrpcService:
    """The hub's gRPC server as a Service: :func:`serve_grpc` on :meth:`start`, ports known
    from then on."""

    name = "grpc"

    def __init__(self, **options: Unpack[GrpcOptions]) -> None:
        self._options = options
        self.listening: GrpcListening | None = None

    def _started(self) -> GrpcListening:
        if self.listening is None:
            raise RuntimeError("the gRPC service has not started")
        return self.listening

    @property
    def port(self) -> int:
        return self._started().port

    @property
    def artifact_port(self) -> int:
        return self._started().artifact_port

    def start(self) -> None:
        self.listening = serve_grpc(**self._options)

    def stop(self) -> None:
        if self.listening is not None:
            self.listening.server.stop(2.0)

    def capacity(self) -> SlotsSnapshot | None:
        """The download slots now (None before the server started)."""
        listening = self.listening
        if listening is None or listening.slots is None:
            return None
        return listening.slots.snapshot()

    def health(self) -> dict[str, object]:
        listening = self.listening
        slots = self.capacity()
        return {
            "running": listening is not None,
            "port": listening.port if listening else None,
            "artifact_port": listening.artifact_port if listening else None,
            "downloads": slots.to_dict() if slots is not None else None,
        }


def start_grpc_server(
    *,
    store: ArtifactStore,
    host: str,
    port: int,
    max_workers: int = DEFAULT_MAX_WORKERS,
    devices: services_pb2_grpc.DeviceServiceServicer | None = None,
    tls: TlsFiles | None = None,
    device_certs: DeviceCertAuth | None = None,
) -> tuple[grpc.Server, int]:
    """Start the hub's gRPC server; return it and the bound port (``port=0``: a free one).

    The arguments are :func:`serve_grpc`'s; this returns only the open port.
    """
    listening = serve_grpc(
        store=store,
        host=host,
        port=port,
        max_workers=max_workers,
        devices=devices,
        tls=tls,
        device_certs=device_certs,
    )
    return listening.server, listening.port


def serve_grpc(
    *,
    store: ArtifactStore,
    host: str,
    port: int,
    max_workers: int = DEFAULT_MAX_WORKERS,
    devices: services_pb2_grpc.DeviceServiceServicer | None = None,
    tls: TlsFiles | None = None,
    device_certs: DeviceCertAuth | None = None,
) -> GrpcListening:
    """Start the hub's gRPC server on ``port`` (0: a free one).

    ``devices`` (``hub.rpc.devices.DeviceServicer``) serves enrolment beside the artifacts.
    Each running ``Download`` holds one of the ``max_workers`` threads; at most
    ``max_workers - RESERVED_WORKERS`` run at once, a further one is refused at once
    (``RESOURCE_EXHAUSTED``, ``retry-after-ms``) rather than queued unserved. Stop it with
    ``server.stop(grace)``. With ``tls`` the port speaks TLS only
    (``grpc.ssl_server_credentials``); plaintext clients fail the handshake. With
    ``device_certs`` (needs ``tls``) a second port, ``device_certs.port``, requires a
    device client certificate, and every method but enrolment needs one (on both ports).
    """
    if device_certs is not None and tls is None:
        raise ValueError("device client certificates on gRPC need TLS")
    interceptors: list[grpc.ServerInterceptor[Any, Any]] = []
    if device_certs is not None:
        interceptors.append(DeviceCertInterceptor(device_certs.authorize))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="edgeloop-grpc"),
        interceptors=interceptors,
        # A call beyond the threads is refused at once (RESOURCE_EXHAUSTED, by gRPC itself,
        # no thread needed) instead of queueing unserved until the caller's timeout.
        maximum_concurrent_rpcs=max_workers,
        # Fail on a port already in use instead of silently sharing it.
        options=[("grpc.so_reuseport", 0)],
    )
    slots = DownloadSlots(stream_capacity(max_workers))
    services_pb2_grpc.add_ArtifactServiceServicer_to_server(
        ArtifactServicer(store=store, slots=slots), server
    )
    if devices is not None:
        services_pb2_grpc.add_DeviceServiceServicer_to_server(devices, server)
    bound = _listen(server, host, port, None if tls is None else tls.grpc_server_credentials())
    mtls_port = None
    if device_certs is not None and tls is not None:
        creds = device_certs.server_credentials(tls)
        mtls_port = _listen(server, host, device_certs.port, creds)
    server.start()
    scheme = "TLS" if tls is not None else "plaintext"
    log.info("gRPC server listening on %s (%s)", _address(host, bound), scheme)
    if mtls_port is not None:
        log.info(
            "gRPC artifacts on %s (TLS, device client certificate required)",
            _address(host, mtls_port),
        )
    return GrpcListening(server=server, port=bound, mtls_port=mtls_port, slots=slots)


def _listen(
    server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None
) -> int:
    address = _address(host, port)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"gRPC server cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise OSError(f"gRPC server cannot listen on {address}")
    return bound
