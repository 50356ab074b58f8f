"""The hub's ArtifactService over a real gRPC server on loopback."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from hub.core.artifacts import FileArtifactStore, sha256_digest
from hub.rpc.server import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, start_grpc_server
from hub.rpc.slots import (
    MAX_RETRY_S,
    MIN_RETRY_S,
    RESERVED_WORKERS,
    RETRY_AFTER_KEY,
    DownloadSlots,
    stream_capacity,
)
from proto import services_pb2, services_pb2_grpc

pytestmark = pytest.mark.timeout(60)

BLOB = os.urandom(3 * DEFAULT_CHUNK_SIZE + 12_345)  # uneven tail on purpose
UNKNOWN = "sha256:" + "0" * 64


@pytest.fixture
def store(tmp_path: Path) -> FileArtifactStore:
    store = FileArtifactStore(root=tmp_path / "artifacts")
    store.put_bytes(BLOB)
    return store


@contextmanager
def _serve(store: FileArtifactStore, *, max_workers: int = 16) -> Iterator[tuple[grpc.Server, str]]:
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0, max_workers=max_workers)
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()


@pytest.fixture
def stub(store: FileArtifactStore) -> Iterator[services_pb2_grpc.ArtifactServiceStub]:
    with _serve(store) as (_, target), grpc.insecure_channel(target) as channel:
        yield services_pb2_grpc.ArtifactServiceStub(channel)


def _download(
    stub: services_pb2_grpc.ArtifactServiceStub,
    digest: str,
    *,
    offset: int = 0,
    chunk_size: int = 0,
) -> list[services_pb2.DownloadChunk]:
    request = services_pb2.DownloadRequest(digest=digest, offset=offset, chunk_size=chunk_size)
    return list(stub.Download(request, timeout=30))


def _assert_contiguous(chunks: list[services_pb2.DownloadChunk], *, start: int, total: int) -> None:
    position = start
    for chunk in chunks:
        assert chunk.offset == position
        assert chunk.total_size == total
        position += len(chunk.data)
    assert position == total


def test_full_download_equals_the_stored_bytes_and_digest(
    stub: services_pb2_grpc.ArtifactServiceStub,
) -> None:
    digest = sha256_digest(BLOB)
    chunks = _download(stub, digest)

    data = b"".join(chunk.data for chunk in chunks)
    assert data == BLOB
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    assert {chunk.digest for chunk in chunks} == {digest}
    _assert_contiguous(chunks, start=0, total=len(BLOB))
    # Default chunk size: 3 full chunks and the tail.
    assert [len(chunk.data) for chunk in chunks] == [DEFAULT_CHUNK_SIZE] * 3 + [12_345]


def test_resume_from_an_offset_gives_exactly_the_rest(
    stub: services_pb2_grpc.ArtifactServiceStub,
) -> None:
    offset = 300_001
    chunks = _download(stub, sha256_digest(BLOB), offset=offset, chunk_size=64 * 1024)

    assert b"".join(chunk.data for chunk in chunks) == BLOB[offset:]
    assert all(len(chunk.data) <= 64 * 1024 for chunk in chunks)
    _assert_contiguous(chunks, start=offset, total=len(BLOB))


def test_cancelled_stream_then_resume_gives_the_whole_file(store: FileArtifactStore) -> None:
    digest = sha256_digest(BLOB)
    # One worker: the resumed call only runs if the cancelled one released it.
    # No BDP probing: the receive window stays at 64 KiB, so the server cannot have sent
    # the whole file before the client cancels.
    options = [("grpc.http2.bdp_probe", 0)]
    with (
        _serve(store, max_workers=1) as (_, target),
        grpc.insecure_channel(target, options=options) as channel,
    ):
        stub = services_pb2_grpc.ArtifactServiceStub(channel)
        call = stub.Download(
            services_pb2.DownloadRequest(digest=digest, chunk_size=32 * 1024), timeout=30
        )
        received = b"".join(next(call).data for _ in range(3))
        call.cancel()
        with pytest.raises(grpc.RpcError) as info:
            for chunk in call:
                received += chunk.data  # chunks already in flight are still valid
        assert info.value.code() == grpc.StatusCode.CANCELLED
        assert 3 * 32 * 1024 <= len(received) < len(BLOB)

        # the cancelled call releases its thread a moment later; until then gRPC refuses
        # the next call at once (RESOURCE_EXHAUSTED), and a client waits and calls again
        deadline = time.monotonic() + 10
        while True:
            try:
                rest = _download(stub, digest, offset=len(received))
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "the cancelled call kept its thread"
                time.sleep(0.02)

    _assert_contiguous(rest, start=len(received), total=len(BLOB))
    assert received + b"".join(chunk.data for chunk in rest) == BLOB


def test_offset_at_the_end_sends_one_empty_chunk_with_the_size(
    stub: services_pb2_grpc.ArtifactServiceStub,
) -> None:
    chunks = _download(stub, sha256_digest(BLOB), offset=len(BLOB))

    assert len(chunks) == 1
    assert chunks[0].data == b""
    assert chunks[0].offset == chunks[0].total_size == len(BLOB)


def test_empty_artifact_downloads(
    stub: services_pb2_grpc.ArtifactServiceStub, store: FileArtifactStore
) -> None:
    digest = store.put_bytes(b"").digest
    chunks = _download(stub, digest)

    assert [(c.offset, c.data, c.total_size, c.digest) for c in chunks] == [(0, b"", 0, digest)]


def test_oversized_chunk_request_is_capped_to_fit_default_client_limits(
    stub: services_pb2_grpc.ArtifactServiceStub, store: FileArtifactStore
) -> None:
    big = os.urandom(9 * 1024 * 1024)
    digest = store.put_bytes(big).digest

    # A default channel refuses messages over 4 MiB; the download must still succeed.
    chunks = _download(stub, digest, chunk_size=64 * 1024 * 1024)

    assert b"".join(chunk.data for chunk in chunks) == big
    assert max(len(chunk.data) for chunk in chunks) == MAX_CHUNK_SIZE
    assert len(chunks) == 3


def test_parallel_downloads_each_get_the_whole_file(
    stub: services_pb2_grpc.ArtifactServiceStub,
) -> None:
    digest = sha256_digest(BLOB)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: _download(stub, digest, chunk_size=50_000), range(8)))

    for chunks in results:
        assert b"".join(chunk.data for chunk in chunks) == BLOB


def test_stat_reports_the_size(
    stub: services_pb2_grpc.ArtifactServiceStub,
) -> None:
    digest = sha256_digest(BLOB)
    info = stub.Stat(services_pb2.StatRequest(digest=digest), timeout=10)

    assert (info.digest, info.size) == (digest, len(BLOB))


@pytest.mark.parametrize(
    ("digest", "offset", "code", "detail"),
    [
        (UNKNOWN, 0, grpc.StatusCode.NOT_FOUND, UNKNOWN),
        ("sha256:abc", 0, grpc.StatusCode.INVALID_ARGUMENT, "sha256:abc"),
        ("", 0, grpc.StatusCode.INVALID_ARGUMENT, "64 lowercase hex"),
        ("md5:" + "0" * 32, 0, grpc.StatusCode.INVALID_ARGUMENT, "md5:"),
        ("sha256:" + "A" * 64, 0, grpc.StatusCode.INVALID_ARGUMENT, "lowercase"),
        (sha256_digest(BLOB), len(BLOB) + 1, grpc.StatusCode.OUT_OF_RANGE, "past the end"),
    ],
)
def test_download_errors_map_to_status_codes(
    stub: services_pb2_grpc.ArtifactServiceStub,
    digest: str,
    offset: int,
    code: grpc.StatusCode,
    detail: str,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _download(stub, digest, offset=offset)

    assert info.value.code() == code
    assert detail in str(info.value.details())


@pytest.mark.parametrize(
    ("digest", "code"),
    [
        (UNKNOWN, grpc.StatusCode.NOT_FOUND),
        ("sha256:nothex", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_stat_errors_map_to_status_codes(
    stub: services_pb2_grpc.ArtifactServiceStub, digest: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Stat(services_pb2.StatRequest(digest=digest), timeout=10)

    assert info.value.code() == code


def test_port_zero_binds_a_free_port_and_a_taken_port_is_refused(
    store: FileArtifactStore,
) -> None:
    with _serve(store) as (_, target):
        port = int(target.rsplit(":", 1)[1])
        assert port > 0
        with pytest.raises(OSError, match=str(port)):
            start_grpc_server(store=store, host="127.0.0.1", port=port)


def test_a_download_beyond_the_slots_is_refused_at_once_with_a_retry_hint(
    store: FileArtifactStore,
) -> None:
    """Five worker threads: one download slot (four kept for Stat, Capacity and the
    refusals). A second download while one streams is refused at once (it used to wait
    inside gRPC unserved until the device's read timeout), with a ``retry-after-ms`` hint;
    ``Capacity`` reports the slots; once the first call ends its slot is free again."""
    digest = sha256_digest(BLOB)
    options = [("grpc.http2.bdp_probe", 0)]  # the first stream cannot finish unread
    with (
        _serve(store, max_workers=RESERVED_WORKERS + 1) as (_, target),
        grpc.insecure_channel(target, options=options) as channel,
    ):
        stub = services_pb2_grpc.ArtifactServiceStub(channel)
        call = stub.Download(
            services_pb2.DownloadRequest(digest=digest, chunk_size=32 * 1024), timeout=30
        )
        next(call)  # streaming: holds the one slot
        now = stub.Capacity(services_pb2.CapacityRequest(), timeout=10)
        assert (now.capacity, now.in_flight, now.refused) == (1, 1, 0)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            _download(stub, digest)
        assert time.monotonic() - started < 5  # refused, not left waiting
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        hint = dict(info.value.trailing_metadata())[RETRY_AFTER_KEY]  # type: ignore[attr-defined]
        assert MIN_RETRY_S * 1000 <= int(hint) <= MAX_RETRY_S * 1000
        assert stub.Capacity(services_pb2.CapacityRequest(), timeout=10).refused == 1
        call.cancel()
        deadline = time.monotonic() + 10
        while stub.Capacity(services_pb2.CapacityRequest(), timeout=10).in_flight:
            assert time.monotonic() < deadline, "the cancelled call kept its slot"
            time.sleep(0.02)
        assert b"".join(c.data for c in _download(stub, digest)) == BLOB
        done = stub.Capacity(services_pb2.CapacityRequest(), timeout=10)
        assert (done.in_flight, done.served, done.refused) == (0, 2, 1)
        assert done.mean_stream_s > 0


def test_download_slots_count_and_hint() -> None:
    slots = DownloadSlots(2)
    assert slots.try_acquire() and slots.try_acquire() and not slots.try_acquire()
    now = slots.snapshot()
    assert (now.capacity, now.in_flight, now.free, now.refused) == (2, 2, 0, 1)
    assert now.retry_after_s == MIN_RETRY_S  # nothing served yet: the shortest wait
    slots.release(time.monotonic() - 100)  # a very slow stream: the hint is capped
    assert slots.snapshot().free == 1 and slots.snapshot().retry_after_s == MAX_RETRY_S
    assert stream_capacity(36) == 36 - RESERVED_WORKERS and stream_capacity(1) == 1


def test_a_call_beyond_the_servers_threads_is_refused_by_grpc_at_once(
    store: FileArtifactStore,
) -> None:
    """One worker thread, held by a stream: gRPC itself refuses the next call at once
    (``maximum_concurrent_rpcs``) instead of queueing it unserved; the agent takes this
    refusal as a wait too (``edge_agent._fetch.retry_after``)."""
    digest = sha256_digest(BLOB)
    with (
        _serve(store, max_workers=1) as (_, target),
        grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as channel,
    ):
        stub = services_pb2_grpc.ArtifactServiceStub(channel)
        held = stub.Download(
            services_pb2.DownloadRequest(digest=digest, chunk_size=32 * 1024), timeout=30
        )
        next(held)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Stat(services_pb2.StatRequest(digest=digest), timeout=20)
        assert time.monotonic() - started < 5
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Concurrent RPC limit" in (info.value.details() or "")  # type: ignore[attr-defined]
        held.cancel()
