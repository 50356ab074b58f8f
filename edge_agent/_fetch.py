"""Resumable, verified bundle download from the hub's ``ArtifactService`` (gRPC).

:func:`download_bundle` appends the streamed bytes to ``<dest>/<hex>.partial`` and, after
a broken stream, a stall or a hub that is briefly down, calls ``Download`` again from the
partial file's size (with jittered, capped exponential :class:`Backoff`). A partial file
left by an earlier run (an agent restart, a SIGKILL) is continued the same way. Once the
whole artifact is there its size and SHA-256 are checked against the requested digest,
the file is fsynced and renamed to ``<dest>/<hex>.bundle``, which is returned. The
bundle's *signature* is checked later, by the install (:mod:`edge_agent._slots`).

With ``url`` (a presigned object-store GET from the deploy command, ``bundle_url``) the
bytes come over plain HTTP(S) instead (:mod:`urllib.request`, nothing beyond the standard
library): ``Range: bytes=<partial size>-`` resumes the same partial file, the same size
and digest check ends it. The URL is used only while ``url_expires_at_ms`` is ahead; once
it has expired, or the store refuses it (403, 404, any 4xx but 408/429), the download goes
on from the same partial file over gRPC (counted as ``url_expired`` / ``url_refused``).
Broken connections and 5xx answers are retried like a broken gRPC stream. The URL is
never logged whole: its query is a bearer credential.

A hub whose download slots are all taken answers ``RESOURCE_EXHAUSTED`` with a
``retry-after-ms`` hint (:mod:`hub.rpc.slots`): the device waits that long (jittered, longer
after each refusal in a row) and calls again. Such a wait is no failed attempt: it does not
use up ``retries``, only ``max_wait_s`` in all.
"""

from __future__ import annotations

import asyncio
import fcntl
import http.client
import logging
import os
import random
import re
import shutil
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import grpc
import grpc.aio

from edge_agent._tls import aio_channel
from edge_agent.errors import AgentError, DownloadError
from model_packager.bundle import file_digest
from proto import services_pb2, services_pb2_grpc

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Backoff",
    "DownloadError",
    "download_bundle",
    "shown_url",
    "url_usable",
]

DEFAULT_CHUNK_SIZE = 256 * 1024
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
#: Codes after which calling again may work: the hub or the network had a problem.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,  # the hub cancelled (shutdown); ours raises CancelledError
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,  # e.g. RST_STREAM from a proxy
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.OUT_OF_RANGE,  # our partial outgrew the artifact: it gets discarded
    }
)
#: The hub's hint on RESOURCE_EXHAUSTED: wait this many milliseconds (hub.rpc.slots).
RETRY_AFTER_KEY = "retry-after-ms"
#: The wait after gRPC itself refused a call beyond the server's threads (no hint).
BUSY_SERVER_WAIT_S = 0.5
#: The longest single wait for a download slot, seconds.
MAX_SLOT_WAIT_S = 10.0
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
_CHANNEL_OPTIONS = [
    # A fresh channel per attempt must really try to connect, not inherit the reconnect
    # backoff of a shared subchannel that failed a moment ago.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter.

    The n-th delay is ``min(cap, initial * factor**n)`` less a random fraction of it of
    up to ``jitter`` (``0``: no jitter, ``1``: anywhere between 0 and the full delay).
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < 0:
            raise ValueError("Backoff.initial and Backoff.cap must be >= 0")
        if self.factor < 1:
            raise ValueError("Backoff.factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter must be within [0, 1]")

    def delays(self, *, rng: random.Random | None = None) -> Iterator[float]:
        """Endless delays in seconds, each in ``[(1 - jitter) * d, d]`` for ``d`` capped."""
        rng = rng or random.Random()
        delay = min(self.initial, self.cap)
        while True:
            yield delay * (1 - self.jitter * rng.random())
            delay = min(delay * self.factor, self.cap)


class _Retry(AgentError):
    """An attempt failed in a way that calling again may fix; ``reason`` is its counter key."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _UrlRefused(AgentError):
    """The presigned URL cannot serve this download: fetch over gRPC instead."""


#: Seconds before its expiry a presigned URL is no longer started on.
URL_EXPIRY_MARGIN_S = 5.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def shown_url(url: str) -> str:
    """``url`` without its query (a presigned URL's signature): what logs may show."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def url_usable(url: str, expires_at_ms: int, *, now: float | None = None) -> bool:
    """A presigned URL worth starting on: http(s), and not within
    :data:`URL_EXPIRY_MARGIN_S` of its expiry (0: no expiry given)."""
    if urlsplit(url).scheme not in {"http", "https"}:
        return False
    if not expires_at_ms:
        return True
    now = time.time() if now is None else now
    return expires_at_ms / 1000 - now > URL_EXPIRY_MARGIN_S


def _open_url(url: str, offset: int, timeout_s: float) -> Any:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


async def _http_attempt(
    *,
    url: str,
    digest: str,
    fh: BinaryIO,
    partial: Path,
    final: Path,
    expected_size: int | None,
    chunk_size: int,
    timeout_s: float,
    on_progress: Callable[[int, int], None] | None,
) -> Path:
    """One HTTP GET of the rest of the artifact, appended to the partial file."""
    have = os.fstat(fh.fileno()).st_size
    if expected_size is not None and have > expected_size:
        log.warning("partial %s holds %d bytes of %d: discarded", partial, have, expected_size)
        fh.truncate(0)
        have = 0
    if expected_size is not None and have == expected_size:  # whole already: check it
        return await asyncio.to_thread(_finish, partial, final, digest=digest, total=have)
    where = shown_url(url)
    try:
        response = await asyncio.to_thread(_open_url, url, have, timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416:  # our partial is not a prefix of it: start over
            fh.truncate(0)
            raise _Retry(f"{where}: range {have}- not satisfiable", reason="http_416") from None
        if exc.code in {408, 429} or exc.code >= 500:
            raise _Retry(f"{where}: HTTP {exc.code}", reason=f"http_{exc.code}") from None
        raise _UrlRefused(f"{where}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _Retry(f"{where}: {why}", reason="http_unreachable") from None
    with response:
        if response.status == 206:
            found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if found is None or int(found.group(1)) != have:
                raise _UrlRefused(f"{where}: a range reply that does not start at byte {have}")
            total = int(found.group(3))
        elif response.status == 200:
            if have:
                log.info("%s ignored the range: downloading %s from the start", where, digest)
                fh.truncate(0)
                have = 0
            length = response.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise _UrlRefused(f"{where}: no Content-Length")
            total = int(length)
        else:
            raise _UrlRefused(f"{where}: HTTP {response.status}")
        if expected_size is not None and total != expected_size:
            raise DownloadError(
                f"artifact {digest} is {total} bytes at {where}, expected {expected_size}",
                reason="size_mismatch",
            )
        _check_disk(partial.parent, total - have)
        if have:
            log.info("resuming download of %s at byte %d of %d over HTTP", digest, have, total)
        if on_progress is not None:
            on_progress(have, total)
        while have < total:
            try:
                # the socket's timeout bounds each read: a stalled transfer raises
                data = await asyncio.to_thread(response.read, min(chunk_size, total - have))
            # IncompleteRead: the connection closed early; ValueError: a closed response
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise _Retry(f"{where}: {exc} at byte {have}", reason="http_broken") from None
            if not data:
                raise _Retry(f"{where}: ended at byte {have} of {total}", reason="truncated")
            fh.write(data)
            fh.flush()
            have += len(data)
            if on_progress is not None:
                on_progress(have, total)
    return await asyncio.to_thread(_finish, partial, final, digest=digest, total=total)


def retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    """The hub's ``retry-after-ms`` hint of a refused call, in seconds; for gRPC's own
    refusal of a call beyond the server's threads (no hint), :data:`BUSY_SERVER_WAIT_S`.
    None: not a refusal for want of a download slot."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for item in exc.trailing_metadata() or ():
        key, value = cast("tuple[str, str | bytes]", item)  # a tuple at runtime
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, float(value) / 1000)
            except (TypeError, ValueError):
                return None
    if "Concurrent RPC limit" in (exc.details() or ""):
        return BUSY_SERVER_WAIT_S
    return None


def slot_wait(hint: float, refusals: int, rng: random.Random) -> float:
    """Seconds to wait after the ``refusals``-th refusal in a row with hint ``hint``: the hint,
    doubled per earlier refusal (up to 16x), times a random factor in [1, 2) (refused devices
    do not all call back at once), capped at :data:`MAX_SLOT_WAIT_S`."""
    grown = hint * 2 ** min(max(refusals - 1, 0), 4)
    return min(MAX_SLOT_WAIT_S, grown * (1 + rng.random()))


def _check_disk(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space in {directory}: {needed} bytes needed, {free} free",
            reason="disk_full",
        )


def _lock(fh: BinaryIO, partial: Path) -> None:
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadError(
            f"{partial} is being written by another download of the same artifact",
            reason="busy",
        ) from None


def _finish(partial: Path, final: Path, *, digest: str, total: int) -> Path:
    """Verify the complete partial file, then fsync it and rename it to ``final``.

    Runs in a thread and works by path (not on the caller's file object), so a caller
    cancelled meanwhile can close its file without pulling it from under this.
    """
    with partial.open("rb") as own:
        os.fsync(own.fileno())  # flushes the file's data, whichever descriptor wrote it
        size = os.fstat(own.fileno()).st_size
    actual = file_digest(partial) if size == total else None
    if actual != digest:
        partial.unlink(missing_ok=True)
        got = f"sha256 {actual}" if actual else f"{size} bytes"
        raise DownloadError(
            f"downloaded artifact does not match: expected {digest} ({total} bytes), got "
            f"{got}; the partial file was deleted",
            reason="digest_mismatch",
        )
    os.replace(partial, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


async def _stream(
    stub: services_pb2_grpc.ArtifactServiceStub,
    fh: BinaryIO,
    *,
    digest: str,
    total: int,
    chunk_size: int,
    timeout_s: float,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Append ``Download`` chunks from the file's size on until it holds ``total`` bytes."""
    position = os.fstat(fh.fileno()).st_size
    if position >= total:
        return
    request = services_pb2.DownloadRequest(digest=digest, offset=position, chunk_size=chunk_size)
    call = stub.Download(request)
    try:
        while position < total:
            try:
                # Not asyncio.wait_for: on 3.11 it can swallow a cancel that races a read.
                async with asyncio.timeout(timeout_s):
                    chunk = await call.read()
            except TimeoutError:
                raise _Retry(
                    f"no data for {timeout_s:g} s at byte {position}", reason="stalled"
                ) from None
            if chunk is _EOF:
                raise _Retry(f"stream ended at byte {position} of {total}", reason="truncated")
            if chunk.total_size != total or (chunk.digest and chunk.digest != digest):
                raise _Retry(
                    f"chunk for {chunk.digest} ({chunk.total_size} bytes) at {position}",
                    reason="foreign_chunk",
                )
            if chunk.offset != position:
                raise _Retry(
                    f"chunk at offset {chunk.offset} but the file holds {position}",
                    reason="wrong_offset",
                )
            if not chunk.data or position + len(chunk.data) > total:
                raise _Retry(
                    f"chunk of {len(chunk.data)} bytes at {position} of {total}",
                    reason="bad_chunk_size",
                )
            fh.write(chunk.data)
            fh.flush()
            position += len(chunk.data)
            if on_progress is not None:
                on_progress(position, total)
    finally:
        call.cancel()


async def _attempt(
    *,
    endpoint: str,
    digest: str,
    fh: BinaryIO,
    partial: Path,
    final: Path,
    expected_size: int | None,
    chunk_size: int,
    timeout_s: float,
    on_progress: Callable[[int, int], None] | None,
    ca_file: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
) -> Path:
    cert, key = client_cert or (None, None)
    channel = aio_channel(
        endpoint, ca_file=ca_file, options=_CHANNEL_OPTIONS, client_cert=cert, client_key=key
    )
    async with channel:
        stub = services_pb2_grpc.ArtifactServiceStub(channel)
        info = await stub.Stat(services_pb2.StatRequest(digest=digest), timeout=timeout_s)
        total = int(info.size)
        if expected_size is not None and total != expected_size:
            raise DownloadError(
                f"artifact {digest} is {total} bytes on the hub, expected {expected_size}",
                reason="size_mismatch",
            )
        have = os.fstat(fh.fileno()).st_size
        if have > total:
            log.warning("partial %s holds %d bytes of %d: discarded", partial, have, total)
            fh.truncate(0)
            have = 0
        _check_disk(partial.parent, total - have)
        if have:
            log.info("resuming download of %s at byte %d of %d", digest, have, total)
        if on_progress is not None:
            on_progress(have, total)
        await _stream(
            stub,
            fh,
            digest=digest,
            total=total,
            chunk_size=chunk_size,
            timeout_s=timeout_s,
            on_progress=on_progress,
        )
    fh.flush()
    return await asyncio.to_thread(_finish, partial, final, digest=digest, total=total)


def _existing(final: Path, digest: str) -> Path | None:
    if not final.is_file():
        return None
    if file_digest(final) == digest:
        return final
    log.warning("%s does not match its digest: downloading it again", final)
    final.unlink(missing_ok=True)
    return None


async def download_bundle(
    *,
    endpoint: str,
    digest: str,
    dest_dir: Path,
    expected_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 60.0,
    retries: int = 5,
    backoff: Backoff | None = None,
    ca_file: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    rejected: Counter[str] | None = None,
    max_wait_s: float = 600.0,
    waited: list[float] | None = None,
    url: str = "",
    url_expires_at_ms: int = 0,
) -> Path:
    """Download artifact ``digest`` from ``endpoint`` (``host:port``) into ``dest_dir``.

    ``ca_file``: the hub's CA certificate; the channel is then TLS (``edge_agent._tls``).
    ``client_cert``: the device's (certificate, key) PEM files, presented over TLS (read at
    each attempt); a hub with client certificates serves bundles only to those.

    Returns ``dest_dir/<hex>.bundle`` whose SHA-256 matches ``digest`` (at once when it
    is already there). ``timeout_s`` bounds ``Stat`` and each wait for the next chunk (a
    stalled stream), not the whole transfer. Broken streams, ``UNAVAILABLE`` and
    timeouts are retried up to ``retries`` times, resuming from the bytes on disk;
    ``on_progress(bytes_on_disk, total)`` is called after each chunk. Raises
    :class:`DownloadError`; cancelling the task leaves the partial file for next time.

    ``rejected`` (optional) counts every failed attempt by reason: ``stalled``,
    ``truncated`` (the stream ended early), ``foreign_chunk``, ``wrong_offset``,
    ``bad_chunk_size`` (garbled streams), ``rpc_<code>`` (e.g. ``rpc_unavailable``) and,
    for the final error, its :attr:`DownloadError.reason` (e.g. ``digest_mismatch``).

    A refusal for want of a download slot (``RESOURCE_EXHAUSTED`` with ``retry-after-ms``)
    is waited out (:func:`slot_wait`) without counting as an attempt, up to ``max_wait_s``
    of such waits in all (then it counts as one); each is counted as ``slot_busy`` and its
    seconds appended to ``waited`` (optional).

    ``url`` / ``url_expires_at_ms``: a presigned HTTP(S) URL of the artifact and its expiry
    (the deploy command's ``bundle_url``): used first while it lasts (Range resume, the same
    checks), gRPC from ``endpoint`` after it expired or was refused (``url_expired``,
    ``url_refused``); HTTP failures are counted as ``http_<status>``, ``http_unreachable``,
    ``http_broken``, ``truncated``.
    """
    counts: Counter[str] = Counter() if rejected is None else rejected
    try:
        match = _DIGEST.fullmatch(digest)
        if match is None:
            raise DownloadError(
                f"digest {digest!r} is not 'sha256:' + 64 lowercase hex", reason="invalid_digest"
            )
        if chunk_size <= 0 or timeout_s <= 0 or retries < 0:
            raise ValueError("chunk_size and timeout_s must be > 0 and retries >= 0")
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / f"{match.group(1)}.bundle"
        partial = dest_dir / f"{match.group(1)}.partial"
        if (done := await asyncio.to_thread(_existing, final, digest)) is not None:
            return done
        delays = (backoff or Backoff()).delays()
        rng, refusals, slot_waits = random.Random(), 0, 0.0
        with partial.open("ab") as fh:
            _lock(fh, partial)
            if expected_size is not None:
                _check_disk(dest_dir, max(0, expected_size - os.fstat(fh.fileno()).st_size))
            attempt = 0
            use_url = bool(url)
            while True:
                if use_url and not url_usable(url, url_expires_at_ms):
                    use_url = False
                    counts["url_expired"] += 1
                    log.info("download of %s: the bundle URL expired; over gRPC", digest)
                try:
                    if use_url:
                        return await _http_attempt(
                            url=url,
                            digest=digest,
                            fh=fh,
                            partial=partial,
                            final=final,
                            expected_size=expected_size,
                            chunk_size=chunk_size,
                            timeout_s=timeout_s,
                            on_progress=on_progress,
                        )
                    return await _attempt(
                        endpoint=endpoint,
                        digest=digest,
                        fh=fh,
                        partial=partial,
                        final=final,
                        expected_size=expected_size,
                        chunk_size=chunk_size,
                        timeout_s=timeout_s,
                        on_progress=on_progress,
                        ca_file=ca_file,
                        client_cert=client_cert,
                    )
                except grpc.aio.AioRpcError as exc:
                    _raise_if_final(exc, digest=digest, endpoint=endpoint, attempt=attempt)
                    hint = retry_after(exc)
                    if hint is not None and slot_waits < max_wait_s:
                        refusals += 1
                        wait = min(slot_wait(hint, refusals, rng), max_wait_s - slot_waits)
                        slot_waits += wait
                        counts["slot_busy"] += 1
                        if waited is not None:
                            waited.append(wait)
                        log.info("download of %s: %s; waiting %.2f s", digest, exc.details(), wait)
                        await asyncio.sleep(wait)
                        continue
                    problem = f"{exc.code().name}: {exc.details()}"
                    counts[f"rpc_{exc.code().name.lower()}"] += 1
                    if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                        fh.truncate(0)
                except _UrlRefused as exc:
                    use_url = False  # no attempt used up: gRPC goes on from the same partial
                    counts["url_refused"] += 1
                    log.warning("download of %s: %s; over gRPC", digest, exc)
                    continue
                except _Retry as exc:
                    problem = str(exc)
                    counts[exc.reason] += 1
                if attempt >= retries:
                    raise DownloadError(
                        f"download of {digest} from {shown_url(url) if use_url else endpoint} "
                        f"failed after {attempt + 1} "
                        f"attempt(s): {problem}",
                        reason="retries_exhausted",
                    )
                attempt += 1
                delay = next(delays)
                log.warning(
                    "download of %s: %s; retry %d/%d in %.2f s",
                    digest,
                    problem,
                    attempt,
                    retries,
                    delay,
                )
                await asyncio.sleep(delay)
    except DownloadError as exc:
        counts[exc.reason] += 1
        raise


def _raise_if_final(exc: grpc.aio.AioRpcError, *, digest: str, endpoint: str, attempt: int) -> None:
    code = exc.code()
    if code in _RETRYABLE:
        return
    reasons = {
        grpc.StatusCode.NOT_FOUND: "not_found",
        grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
        grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",  # no client certificate
        grpc.StatusCode.PERMISSION_DENIED: "permission_denied",  # e.g. a revoked one
    }
    raise DownloadError(
        f"download of {digest} from {endpoint}: {code.name}: {exc.details()}",
        reason=reasons.get(code, "rpc_error"),
    ) from exc
