"""edge_agent._fetch against the hub's real gRPC server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge_agent._fetch import (
    BUSY_SERVER_WAIT_S,
    MAX_SLOT_WAIT_S,
    Backoff,
    DownloadError,
    download_bundle,
    retry_after,
    slot_wait,
)
from hub.core.artifacts import FileArtifactStore, sha256_digest
from hub.rpc import server as grpc_server
from hub.rpc.server import ArtifactServicer, start_grpc_server
from hub.rpc.slots import RESERVED_WORKERS
from proto import services_pb2, services_pb2_grpc

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
CHUNK = 64 * 1024
BLOB = os.urandom(3 * 1024 * 1024 + 1234)
DIGEST = sha256_digest(BLOB)
HEX = DIGEST.removeprefix("sha256:")
FAST = Backoff(initial=0.01, factor=2.0, cap=0.05, jitter=0.5)
UNKNOWN = "sha256:" + "0" * 64

Fault = Callable[
    [int, services_pb2.DownloadChunk, grpc.ServicerContext], services_pb2.DownloadChunk | None
]


class RecordingServicer(ArtifactServicer):
    """The hub's servicer, recording requests; ``faults[k]`` alters the k-th Download."""

    def __init__(self, *, store: FileArtifactStore, **kwargs: Any) -> None:
        super().__init__(store=store, **kwargs)
        self.offsets: list[int] = []
        self.stats = 0
        self.faults: list[Fault] = []

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.stats += 1
        return super().Stat(request, context)

    def Download(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.offsets.append(request.offset)
        fault = self.faults.pop(0) if self.faults else None
        for index, chunk in enumerate(super().Download(request, context)):
            out = fault(index, chunk, context) if fault else chunk
            if out is None:  # the fault ends the stream here (status OK)
                return
            yield out


def break_after(n: int) -> Fault:
    def fault(index: int, chunk: Any, context: grpc.ServicerContext) -> Any:
        if index == n:
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected: connection lost")
        return chunk

    return fault


def bad_offset_at(n: int) -> Fault:
    def fault(index: int, chunk: Any, context: grpc.ServicerContext) -> Any:
        if index == n:
            return services_pb2.DownloadChunk(
                offset=chunk.offset + 7, data=chunk.data, total_size=chunk.total_size
            )
        return chunk

    return fault


def stall_at(n: int, release: threading.Event) -> Fault:
    def fault(index: int, chunk: Any, context: grpc.ServicerContext) -> Any:
        if index == n:
            release.wait(10)
        return chunk

    return fault


@dataclass
class Hub:
    store: FileArtifactStore
    servicer: RecordingServicer
    endpoint: str
    server: grpc.Server
    servicers: list[RecordingServicer] = field(default_factory=list)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    store = FileArtifactStore(root=tmp_path / "hub")
    store.put_bytes(BLOB)
    made: list[RecordingServicer] = []

    def factory(*, store: FileArtifactStore, **kwargs: Any) -> RecordingServicer:
        made.append(RecordingServicer(store=store, **kwargs))
        return made[-1]

    monkeypatch.setattr(grpc_server, "ArtifactServicer", factory)
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
    try:
        yield Hub(store, made[0], f"127.0.0.1:{port}", server, made)
    finally:
        server.stop(None).wait()


def fetch(hub_or_endpoint: Hub | str, dest: Path, **kwargs: Any) -> Path:
    endpoint = hub_or_endpoint if isinstance(hub_or_endpoint, str) else hub_or_endpoint.endpoint
    options: dict[str, Any] = {"digest": DIGEST, "chunk_size": CHUNK, "backoff": FAST} | kwargs
    return asyncio.run(download_bundle(endpoint=endpoint, dest_dir=dest, **options))


def assert_complete(path: Path, dest: Path) -> None:
    assert path == dest / f"{HEX}.bundle"
    assert path.read_bytes() == BLOB
    assert not (dest / f"{HEX}.partial").exists()


def test_full_download(hub: Hub, tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    dest = tmp_path / "dl"
    path = fetch(hub, dest, on_progress=lambda done, total: progress.append((done, total)))
    assert_complete(path, dest)
    assert hub.servicer.offsets == [0]
    assert progress[0] == (0, len(BLOB)) and progress[-1] == (len(BLOB), len(BLOB))
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_existing_bundle_is_returned_at_once_and_a_bad_one_replaced(
    hub: Hub, tmp_path: Path
) -> None:
    dest = tmp_path / "dl"
    fetch(hub, dest)
    assert fetch(hub, dest) == dest / f"{HEX}.bundle"
    assert hub.servicer.stats == 1  # the second call never asked the hub
    (dest / f"{HEX}.bundle").write_bytes(b"rotten")
    assert_complete(fetch(hub, dest), dest)
    assert hub.servicer.offsets == [0, 0]


def test_resumes_after_the_stream_breaks(hub: Hub, tmp_path: Path) -> None:
    hub.servicer.faults = [break_after(5), break_after(3)]
    dest = tmp_path / "dl"
    assert_complete(fetch(hub, dest), dest)
    assert hub.servicer.offsets == [0, 5 * CHUNK, 8 * CHUNK]


def test_resumes_after_the_task_is_cancelled(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    partial = dest / f"{HEX}.partial"

    async def interrupted() -> None:
        reached = asyncio.Event()

        def progress(done: int, total: int) -> None:
            if done >= 1024 * 1024:
                reached.set()

        task = asyncio.create_task(
            download_bundle(
                endpoint=hub.endpoint,
                digest=DIGEST,
                dest_dir=dest,
                chunk_size=CHUNK,
                on_progress=progress,
            )
        )
        await asyncio.wait_for(reached.wait(), timeout=20)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(interrupted())
    held = partial.stat().st_size
    assert 1024 * 1024 <= held < len(BLOB)
    assert partial.read_bytes() == BLOB[:held]
    assert_complete(fetch(hub, dest), dest)
    assert hub.servicer.offsets == [0, held]


def test_continues_a_partial_file_left_by_an_earlier_run(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / f"{HEX}.partial").write_bytes(BLOB[:1_000_003])
    assert_complete(fetch(hub, dest), dest)
    assert hub.servicer.offsets == [1_000_003]


def test_a_partial_larger_than_the_artifact_is_discarded(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / f"{HEX}.partial").write_bytes(BLOB + b"trailing junk")
    assert_complete(fetch(hub, dest), dest)
    assert hub.servicer.offsets == [0]


def test_corrupted_partial_fails_the_digest_then_a_fresh_download_works(
    hub: Hub, tmp_path: Path
) -> None:
    dest = tmp_path / "dl"
    dest.mkdir()
    partial = dest / f"{HEX}.partial"
    partial.write_bytes(os.urandom(1_000_000))  # right size class, wrong bytes
    with pytest.raises(DownloadError, match="does not match") as info:
        fetch(hub, dest)
    assert info.value.reason == "digest_mismatch"
    assert not partial.exists()
    assert not (dest / f"{HEX}.bundle").exists()
    assert_complete(fetch(hub, dest), dest)
    assert hub.servicer.offsets == [1_000_000, 0]


def test_a_chunk_at_the_wrong_offset_is_dropped_and_the_stream_resumed(
    hub: Hub, tmp_path: Path
) -> None:
    hub.servicer.faults = [bad_offset_at(4)]
    dest = tmp_path / "dl"
    assert_complete(fetch(hub, dest), dest)
    assert hub.servicer.offsets == [0, 4 * CHUNK]


def end_after(n: int) -> Fault:
    """The stream ends cleanly (status OK) after ``n`` chunks: a truncated transfer."""

    def fault(index: int, chunk: Any, context: grpc.ServicerContext) -> Any:
        return None if index == n else chunk

    return fault


def garbled(kind: str, n: int) -> Fault:
    def fault(index: int, chunk: Any, context: grpc.ServicerContext) -> Any:
        if index != n:
            return chunk
        if kind == "foreign_chunk":
            return services_pb2.DownloadChunk(
                offset=chunk.offset, data=chunk.data, total_size=chunk.total_size + 1
            )
        # "bad_chunk_size": an empty chunk
        return services_pb2.DownloadChunk(offset=chunk.offset, total_size=chunk.total_size)

    return fault


def test_truncated_and_garbled_streams_are_rejected_counted_and_resumed(
    hub: Hub, tmp_path: Path
) -> None:
    hub.servicer.faults = [
        bad_offset_at(2),
        garbled("foreign_chunk", 1),
        garbled("bad_chunk_size", 1),
        end_after(2),
        break_after(1),
    ]
    dest, rejected = tmp_path / "dl", Counter[str]()
    assert_complete(fetch(hub, dest, rejected=rejected, retries=6), dest)
    assert rejected == {
        "wrong_offset": 1,
        "foreign_chunk": 1,
        "bad_chunk_size": 1,
        "truncated": 1,
        "rpc_unavailable": 1,
    }
    # each attempt resumed from what was on disk; nothing garbled was written
    assert hub.servicer.offsets == [0, 2 * CHUNK, 3 * CHUNK, 4 * CHUNK, 6 * CHUNK, 7 * CHUNK]


def test_the_final_error_is_counted_too(hub: Hub, tmp_path: Path) -> None:
    hub.servicer.faults = [break_after(1), break_after(1)]
    rejected = Counter[str]()
    with pytest.raises(DownloadError) as info:
        fetch(hub, tmp_path / "dl", rejected=rejected, retries=1)
    assert info.value.reason == "retries_exhausted"
    assert rejected == {"rpc_unavailable": 2, "retries_exhausted": 1}


def test_a_stalled_stream_times_out_and_resumes(hub: Hub, tmp_path: Path) -> None:
    release = threading.Event()
    hub.servicer.faults = [stall_at(3, release)]
    dest = tmp_path / "dl"
    try:
        assert_complete(fetch(hub, dest, timeout_s=0.3), dest)
    finally:
        release.set()
    assert hub.servicer.offsets == [0, 3 * CHUNK]


def test_not_found_is_not_retried(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="NOT_FOUND") as info:
        fetch(hub, tmp_path / "dl", digest=UNKNOWN, retries=5)
    assert info.value.reason == "not_found"
    assert hub.servicer.stats == 1
    assert hub.servicer.offsets == []


def test_a_malformed_digest_is_refused_before_any_call(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        fetch(hub, tmp_path / "dl", digest="sha256:ABC")
    assert info.value.reason == "invalid_digest"
    assert hub.servicer.stats == 0


def test_expected_size_must_match_the_hub(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        fetch(hub, tmp_path / "dl", expected_size=len(BLOB) + 1)
    assert info.value.reason == "size_mismatch"
    assert hub.servicer.offsets == []


class SignallingBackoff(Backoff):
    """A Backoff that counts the delays taken and signals the first one."""

    def __init__(self, first: threading.Event, taken: list[float]) -> None:
        super().__init__(initial=0.05, factor=2.0, cap=0.2, jitter=0.5)
        object.__setattr__(self, "_hooks", (first, taken))

    __slots__ = ("_hooks",)

    def delays(self, **kwargs: Any) -> Iterator[float]:
        first, taken = self._hooks
        for delay in Backoff.delays(self, **kwargs):
            taken.append(delay)
            first.set()
            yield delay


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_hub_down_for_a_while_then_up(tmp_path: Path) -> None:
    store = FileArtifactStore(root=tmp_path / "hub")
    store.put_bytes(BLOB)
    port = free_port()
    first, taken = threading.Event(), []
    servers: list[grpc.Server] = []

    async def scenario() -> Path:
        task = asyncio.create_task(
            download_bundle(
                endpoint=f"127.0.0.1:{port}",
                digest=DIGEST,
                dest_dir=tmp_path / "dl",
                retries=50,
                backoff=SignallingBackoff(first, taken),
            )
        )
        assert await asyncio.to_thread(first.wait, 20), "the client never retried"
        servers.append(start_grpc_server(store=store, host="127.0.0.1", port=port)[0])
        return await asyncio.wait_for(task, timeout=30)

    try:
        path = asyncio.run(scenario())
    finally:
        for server in servers:
            server.stop(None).wait()
    assert_complete(path, tmp_path / "dl")
    assert 1 <= len(taken) < 50


def test_retries_are_bounded(tmp_path: Path) -> None:
    first, taken = threading.Event(), []
    with pytest.raises(DownloadError, match="after 3 attempt") as info:
        fetch(
            f"127.0.0.1:{free_port()}",
            tmp_path / "dl",
            retries=2,
            backoff=SignallingBackoff(first, taken),
        )
    assert info.value.reason == "retries_exhausted"
    assert len(taken) == 2


def test_not_enough_disk_space(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage

    def tiny(path: Any) -> Any:
        return real(path)._replace(free=1000)

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    with pytest.raises(DownloadError, match="disk space") as info:
        fetch(hub, tmp_path / "dl", expected_size=len(BLOB))
    assert info.value.reason == "disk_full"
    assert hub.servicer.stats == 0  # checked before any call
    with pytest.raises(DownloadError, match="disk space"):
        fetch(hub, tmp_path / "dl")  # size learnt from Stat
    assert hub.servicer.stats == 1
    assert hub.servicer.offsets == []


def test_two_downloads_of_one_digest_do_not_share_the_partial(hub: Hub, tmp_path: Path) -> None:
    async def both() -> list[Path | BaseException]:
        calls = [
            download_bundle(endpoint=hub.endpoint, digest=DIGEST, dest_dir=tmp_path / "dl")
            for _ in range(2)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(both())
    errors = [r for r in results if isinstance(r, DownloadError)]
    assert len(errors) == 1 and errors[0].reason == "busy"
    assert_complete(next(r for r in results if isinstance(r, Path)), tmp_path / "dl")


def test_backoff_is_capped_exponential_with_jitter() -> None:
    import random

    plain = Backoff(initial=0.1, factor=3.0, cap=1.0, jitter=0.0).delays()
    assert [round(next(plain), 6) for _ in range(5)] == [0.1, 0.3, 0.9, 1.0, 1.0]
    jittered = Backoff(initial=1.0, factor=2.0, cap=4.0, jitter=0.5).delays(rng=random.Random(1))
    values = [next(jittered) for _ in range(50)]
    assert all(0.5 <= v <= 1.0 for v in values[:1]) and all(2.0 <= v <= 4.0 for v in values[2:])
    assert len(set(values[2:])) > 1
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)


SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from edge_agent._fetch import Backoff, download_bundle

endpoint, digest, dest, pause_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def progress(done, total):
    if pause_at and done >= pause_at:
        print(f"PAUSED {done}", flush=True)
        time.sleep(60)  # the test SIGKILLs us here, mid-transfer

path = asyncio.run(download_bundle(
    endpoint=endpoint, digest=digest, dest_dir=Path(dest), chunk_size=64 * 1024,
    on_progress=progress, backoff=Backoff(initial=0.05, cap=0.2)))
print(f"DONE {path}", flush=True)
"""


def test_sigkill_mid_download_then_rerun_completes(hub: Hub, tmp_path: Path) -> None:
    big = os.urandom(20 * 1024 * 1024)
    digest = hub.store.put_bytes(big).digest
    dest = tmp_path / "dl"
    script = tmp_path / "fetch_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(script), hub.endpoint, digest, str(dest)]

    proc = subprocess.Popen([*argv, str(8 * 1024 * 1024)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the download never got going"
        line = proc.stdout.readline().decode()
        assert line.startswith("PAUSED "), line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    held = int(line.split()[1])
    partial = dest / f"{digest.removeprefix('sha256:')}.partial"
    assert partial.stat().st_size == held

    done = subprocess.run([*argv, "0"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split()[-1])
    assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not partial.exists()
    assert hub.servicer.offsets == [0, held]


def test_a_device_the_hub_has_no_slot_for_waits_instead_of_failing(tmp_path: Path) -> None:
    """One download slot, held by another client for 0.6 s: the agent is refused
    (RESOURCE_EXHAUSTED with the hub's hint), waits, and downloads; with ``retries=0``,
    so the waits were not counted as failed attempts. Before, such a call sat unserved
    inside gRPC until the 60 s read timeout."""
    store = FileArtifactStore(root=tmp_path / "hub")
    store.put_bytes(BLOB)
    server, port = start_grpc_server(
        store=store, host="127.0.0.1", port=0, max_workers=RESERVED_WORKERS + 1
    )
    endpoint = f"127.0.0.1:{port}"
    options = [("grpc.http2.bdp_probe", 0)]  # the holder's stream cannot finish unread
    try:
        with grpc.insecure_channel(endpoint, options=options) as channel:
            stub = services_pb2_grpc.ArtifactServiceStub(channel)
            holder = stub.Download(services_pb2.DownloadRequest(digest=DIGEST, chunk_size=CHUNK))
            next(holder)
            threading.Timer(0.6, holder.cancel).start()
            counts: Counter[str] = Counter()
            waited: list[float] = []
            path = fetch(endpoint, tmp_path / "dest", retries=0, rejected=counts, waited=waited)
        assert_complete(path, tmp_path / "dest")
        assert counts["slot_busy"] == len(waited) >= 1
        assert 0.3 < sum(waited) < 30
    finally:
        server.stop(None).wait()


def test_slot_waits_follow_the_hint_grow_and_are_capped() -> None:
    rng = random.Random(7)
    first = [slot_wait(0.1, 1, rng) for _ in range(200)]
    assert min(first) >= 0.1 and max(first) < 0.2
    assert all(0.4 <= slot_wait(0.1, 3, rng) < 0.8 for _ in range(50))
    assert slot_wait(0.1, 50, rng) <= MAX_SLOT_WAIT_S and slot_wait(100, 1, rng) == MAX_SLOT_WAIT_S


def test_what_counts_as_a_refusal_for_want_of_a_slot() -> None:
    def error(code: grpc.StatusCode, details: str, *trailing: tuple[str, str]) -> Any:
        return grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
        )

    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_after(error(exhausted, "busy", ("retry-after-ms", "250"))) == 0.25
    # gRPC's own refusal of a call beyond the server's threads: no hint, a default wait
    assert retry_after(error(exhausted, "Concurrent RPC limit exceeded!")) == BUSY_SERVER_WAIT_S
    assert retry_after(error(exhausted, "received message larger than max")) is None
    assert retry_after(error(grpc.StatusCode.UNAVAILABLE, "down")) is None
