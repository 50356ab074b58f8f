"""edge_agent._fetch over a presigned URL: the hub's S3 store (hub.core.s3) on a real S3
server process (tests/fixtures/s3.py) signs it, the agent downloads over plain HTTP with
Range resume, and falls back to the hub's gRPC server when the URL expired or is refused."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from edge_agent._fetch import Backoff, download_bundle, shown_url, url_usable
from hub.core.artifacts import DownloadLinks, open_store, sha256_digest
from hub.core.s3 import S3ArtifactStore
from hub.rpc.server import start_grpc_server

pytestmark = pytest.mark.timeout(60)

BLOB = os.urandom(2 * 1024 * 1024 + 321)
DIGEST = sha256_digest(BLOB)
HEX = DIGEST.removeprefix("sha256:")
FAST = Backoff(initial=0.01, factor=2.0, cap=0.05, jitter=0.5)
CHUNK = 64 * 1024


@dataclass
class Hub:
    store: S3ArtifactStore
    endpoint: str  # the gRPC artifact server in front of the same store
    url: str
    expires_ms: int


@pytest.fixture
def hub(s3_url: str) -> Iterator[Hub]:
    store = open_store(s3_url)
    assert isinstance(store, S3ArtifactStore)
    store.put_bytes(BLOB)
    link = DownloadLinks(store, ttl_s=300)(DIGEST)
    assert link is not None
    server, port = start_grpc_server(store=store, host="127.0.0.1", port=0)
    try:
        yield Hub(store, f"127.0.0.1:{port}", *link)
    finally:
        server.stop(None).wait()


def fetch(hub: Hub, dest: Path, **kwargs: Any) -> Path:
    options: dict[str, Any] = {
        "endpoint": hub.endpoint,
        "digest": DIGEST,
        "dest_dir": dest,
        "expected_size": len(BLOB),
        "chunk_size": CHUNK,
        "backoff": FAST,
        "url": hub.url,
        "url_expires_at_ms": hub.expires_ms,
    } | kwargs
    return asyncio.run(download_bundle(**options))


def test_downloads_over_the_presigned_url(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counts: Counter[str] = Counter()
    seen: list[int] = []
    caplog.set_level(logging.DEBUG)
    started = time.perf_counter()
    path = fetch(hub, tmp_path, rejected=counts, on_progress=lambda done, _t: seen.append(done))
    took = time.perf_counter() - started
    assert path.read_bytes() == BLOB and not counts
    assert seen[-1] == len(BLOB)
    assert "X-Amz-Signature" not in caplog.text
    print(f"presigned HTTP download: {len(BLOB) / 2**20 / took:.0f} MiB/s")


def test_resumes_a_partial_file_with_a_range_request(hub: Hub, tmp_path: Path) -> None:
    (tmp_path / f"{HEX}.partial").write_bytes(BLOB[:1_000_003])
    seen: list[int] = []
    fetch(hub, tmp_path, on_progress=lambda done, _t: seen.append(done))
    assert seen[0] == 1_000_003  # went on from there, not from 0
    assert (tmp_path / f"{HEX}.bundle").read_bytes() == BLOB


async def _cutting_proxy(
    upstream: tuple[str, int], *, cut_after: int, reset: bool
) -> asyncio.Server:
    """Forwards to ``upstream``; the first connection's reply is cut after ``cut_after``
    bytes (``reset``: a TCP reset, else an early close), later ones are whole."""
    connections = 0

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int) -> None:
        sent = 0
        while data := await reader.read(64 * 1024):
            if sent + len(data) > limit:
                writer.write(data[: limit - sent])
                await writer.drain()
                if reset:
                    writer.transport.abort()
                else:
                    writer.close()
                return
            writer.write(data)
            sent += len(data)
            await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        limit = cut_after if connections == 1 else 1 << 62
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        try:
            await asyncio.gather(pipe(reader, up_writer, 1 << 62), pipe(up_reader, writer, limit))
        except OSError:
            pass
        finally:
            up_writer.transport.abort()
            writer.transport.abort()

    return await asyncio.start_server(accept, "127.0.0.1", 0)


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
def test_resumes_after_the_connection_is_cut(hub: Hub, tmp_path: Path, reset: bool) -> None:
    parts = urlsplit(hub.url)
    counts: Counter[str] = Counter()
    offsets: list[int] = []

    async def run() -> Path:
        upstream = (parts.hostname or "", parts.port or 80)
        server = await _cutting_proxy(upstream, cut_after=700_000, reset=reset)
        port = server.sockets[0].getsockname()[1]
        try:
            return await download_bundle(
                endpoint=hub.endpoint,
                digest=DIGEST,
                dest_dir=tmp_path,
                expected_size=len(BLOB),
                chunk_size=CHUNK,
                backoff=FAST,
                # a presigned URL's signature covers the path, not the host's port
                url=urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}")),
                url_expires_at_ms=hub.expires_ms,
                rejected=counts,
                on_progress=lambda done, _total: offsets.append(done),
            )
        finally:
            server.close()

    path = asyncio.run(run())
    assert path.read_bytes() == BLOB
    assert sum(counts.values()) == 1 and set(counts) <= {"http_broken", "truncated"}, counts
    # the second GET reports where it starts: the bytes already on disk, not 0
    resumed = [b for a, b in itertools.pairwise(offsets) if b <= a]
    assert len(resumed) == 1 and 500_000 < resumed[0] < 700_000, resumed


def test_a_whole_partial_is_checked_without_a_request(hub: Hub, tmp_path: Path) -> None:
    (tmp_path / f"{HEX}.partial").write_bytes(BLOB)
    counts: Counter[str] = Counter()
    path = fetch(hub, tmp_path, url="http://127.0.0.1:1/nothing-listens", rejected=counts)
    assert path.read_bytes() == BLOB and not counts


def test_an_expired_url_falls_back_to_grpc(hub: Hub, tmp_path: Path) -> None:
    counts: Counter[str] = Counter()
    expired = int((time.time() - 1) * 1000)
    path = fetch(hub, tmp_path, url_expires_at_ms=expired, rejected=counts)
    assert path.read_bytes() == BLOB and counts == Counter({"url_expired": 1})


def test_a_refused_url_falls_back_to_grpc_from_the_same_partial(hub: Hub, tmp_path: Path) -> None:
    counts: Counter[str] = Counter()
    missing = hub.url.replace(HEX, "0" * 64)  # the store answers 404 (or 403: bad signature)
    (tmp_path / f"{HEX}.partial").write_bytes(BLOB[:4096])
    path = fetch(hub, tmp_path, url=missing, rejected=counts)
    assert path.read_bytes() == BLOB and counts == Counter({"url_refused": 1})


def test_a_wrong_size_at_the_url_is_refused_like_over_grpc(hub: Hub, tmp_path: Path) -> None:
    from edge_agent.errors import DownloadError

    with pytest.raises(DownloadError) as caught:
        fetch(hub, tmp_path, expected_size=len(BLOB) + 1)
    assert caught.value.reason == "size_mismatch"
    assert "Signature" not in str(caught.value)


def test_url_checks_and_what_logs_show() -> None:
    now = 1_000.0
    assert url_usable("https://s3.example/b/k?X-Amz-Signature=abc", 0, now=now)
    assert url_usable("http://h/k", int((now + 60) * 1000), now=now)
    assert not url_usable("http://h/k", int((now + 2) * 1000), now=now)  # within the margin
    assert not url_usable("file:///etc/passwd", 0, now=now)
    assert shown_url("https://s3.example:9000/b/k?X-Amz-Signature=abc") == (
        "https://s3.example:9000/b/k"
    )
