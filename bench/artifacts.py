"""Bundle transfer: the hub's gRPC ``ArtifactService.Download`` against a raw TCP socket
sending the same bytes over loopback in the same run (the transfer rate the rollout
benchmark's lower bound uses)."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench._result import BenchResult
from hub.core.artifacts import FileArtifactStore
from hub.rpc.server import MAX_CHUNK_SIZE, start_grpc_server
from proto import services_pb2, services_pb2_grpc

SIZE = 64 * 1024 * 1024
ROUNDS = 3


def _raw_socket_rate(data: bytes) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def send() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(data)

    thread = threading.Thread(target=send)
    thread.start()
    start = time.perf_counter()
    received = 0
    hasher = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port)) as client:
        while chunk := client.recv(1024 * 1024):
            hasher.update(chunk)
            received += len(chunk)
    elapsed = time.perf_counter() - start
    thread.join()
    server.close()
    assert received == len(data) and hasher.digest() == hashlib.sha256(data).digest()
    return len(data) / elapsed


def _grpc_rate(stub: services_pb2_grpc.ArtifactServiceStub, digest: str, size: int) -> float:
    start = time.perf_counter()
    hasher = hashlib.sha256()
    received = 0
    request = services_pb2.DownloadRequest(digest=digest, offset=0, chunk_size=MAX_CHUNK_SIZE)
    for chunk in stub.Download(request):
        hasher.update(chunk.data)
        received += len(chunk.data)
    elapsed = time.perf_counter() - start
    assert received == size and "sha256:" + hasher.hexdigest() == digest
    return size / elapsed


def run() -> BenchResult:
    data = os.urandom(SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        store = FileArtifactStore(root=Path(tmp))
        ref = store.put_bytes(data)
        server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = services_pb2_grpc.ArtifactServiceStub(channel)
                grpc_rates = [_grpc_rate(stub, ref.digest, ref.size) for _ in range(ROUNDS)]
        finally:
            server.stop(None)
    raw_rates = [_raw_socket_rate(data) for _ in range(ROUNDS)]
    grpc_best, raw_best = max(grpc_rates), max(raw_rates)
    ratio = grpc_best / raw_best
    return BenchResult(
        name="artifacts",
        baseline="raw TCP socket on loopback with sha256 on receipt, same bytes, same run",
        ratio=ratio,
        target=">= 0.25 (gRPC framing and protobuf copies vs a bare socket)",
        met=ratio >= 0.25,
        details={
            "bytes": SIZE,
            "grpc_MBps": round(grpc_best / 1e6, 1),
            "raw_socket_MBps": round(raw_best / 1e6, 1),
            "rounds": ROUNDS,
        },
    )
