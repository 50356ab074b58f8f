"""The ingest worker's optional decode process (``IngestWorker(decode_process=True)``).

The receive thread only collects ``(topic, payload)`` and the MQTT packet ids; a child
process (started with ``spawn``; it builds its own engine and device cache from the database
URL and settings) decodes, packs, checks the device and stores each batch with the same
code as the in-thread path (``hub.ingest._batch``), then reports ``stored``, ``duplicates``,
rejections and the handled ack keys. Only then does the worker ack the batch's messages.

Batches go to the child in order over a pipe and come back in order. Each stays in
:class:`DecodeProcess`'s in-flight queue until its result is read, so when the child dies
(SIGKILL, OOM) the next poll notices, reads what it reported before dying, starts a new one
and sends it the rest again, in order: nothing un-acked is lost, and a batch the dead child
committed but could not report comes back as duplicates (the dedupe keys), never as rows
stored twice. A database outage (in the device check or the store) is never a rejection:
the child keeps the batch and retries it with the worker's back-off (``hub.ingest._batch``).

``spawn`` re-imports the parent's main module in the child: a script that creates such a
worker needs the usual ``if __name__ == "__main__":`` guard (``hub serve`` and
``python -m hub.ingest`` have it).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy.engine import Engine

from hub.core.errors import EdgeloopError
from hub.ingest._acks import AckKey
from hub.ingest._batch import DatabaseUnavailable, Decoder, retry_delay, store_items
from hub.ingest._decode import Item
from hub.ingest._devices import DeviceCache
from hub.ingest._stats import RateLimitedLog

log = logging.getLogger("edgeloop.ingest")

START_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = 1.0
Ack = tuple[int, int, int]  # (mid, qos, connection generation)


class DecodeProcessError(EdgeloopError, RuntimeError):
    """The decode process could not be started (its own error in the message)."""


@dataclass(frozen=True, kw_only=True)
class ChildConfig:
    """What the child needs, as plain values (no engine, no live objects)."""

    database_url: str
    topic_prefix: str
    fleet: str
    max_payload_bytes: int
    accept_unknown_devices: bool
    device_refresh_s: float = 10.0
    log_level: int = logging.WARNING


@dataclass(frozen=True, slots=True)
class BatchResult:
    stored: int
    duplicates: int
    rejected: dict[str, int]
    handled: list[AckKey]
    retries: int  # database outages before the commit


@dataclass(slots=True)
class _Batch:
    id: int
    messages: list[tuple[str, bytes]]
    acks: list[Ack] = field(default_factory=list)


def database_url(engine: Engine) -> str:
    """``engine``'s URL for the child; in-memory SQLite cannot be shared with a process."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or "mode=memory" in str(url)
    ):
        raise ValueError(
            "the ingest decode process needs a database another process can open; "
            f"{url.render_as_string()!r} is in-memory SQLite (use a file or PostgreSQL, "
            "or decode_process=False)"
        )
    return url.render_as_string(hide_password=False)


# Child ------------------------------------------------------------------------------------


def _child_main(conn: Connection, config: ChildConfig) -> None:
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[decode %(process)d]: %(message)s",
    )
    from hub.core.redact import install_log_redaction

    install_log_redaction()
    try:
        from hub.core.db import make_engine
        from proto.topics import Topics

        engine = make_engine(config.database_url)
        devices = DeviceCache(engine=engine, refresh_s=config.device_refresh_s)
        topics = Topics(prefix=config.topic_prefix, fleet=config.fleet)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    # What was imported stays out of the collector's way; batches die young (pack() keeps a
    # pending window to a few strings), so collecting gen 0 less often costs no memory.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    conn.send(("ready", os.getpid()))
    warn = RateLimitedLog(log)
    rejected: dict[str, int] = {}

    def reject(reason: str, detail: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1
        warn.warning(reason, "ingest rejected a message (%s): %s", reason, detail)

    decoder = Decoder(
        topics=topics,
        max_bytes=config.max_payload_bytes,
        devices=devices,
        accept_unknown=config.accept_unknown_devices,
        keys=True,
        reject=reject,
    )
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the worker is gone
            break
        if request is None:
            break
        batch_id, messages = request
        rejected.clear()
        items: list[Item] = []
        handled: list[AckKey] = []
        pending = deque(messages)
        retries = 0
        while True:  # a database outage is never a rejection: wait, then go on where it was
            try:
                decoder.add_all(pending, items, handled)
                result = store_items(
                    engine,
                    items,
                    groups=devices.groups,
                    now=datetime.now(UTC),
                    create_unknown=config.accept_unknown_devices,
                )
                break
            except DatabaseUnavailable as exc:
                retries += 1
                warn.warning("db", "ingest cannot store a batch (will retry): %s", exc)
                time.sleep(retry_delay(retries))
        for reason, detail in result.rejected:
            reject(reason, detail)
        report = BatchResult(result.stored, result.duplicates, dict(rejected), handled, retries)
        conn.send((batch_id, report))
    engine.dispose()


# Parent -----------------------------------------------------------------------------------


class DecodeProcess:
    """The worker's handle on its child: submit batches, read results in order, restart the
    child when it dies (callers serialise calls; the worker holds its lock)."""

    def __init__(self, config: ChildConfig, *, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self._config, self._start_timeout = config, start_timeout_s
        self._ctx = mp.get_context("spawn")
        self._in_flight: deque[_Batch] = deque()
        self._next_id = 0
        self._conn: Connection | None = None
        self._proc: Any = None
        self._retry_at = 0.0
        self.restarts = 0
        self.pid = self._start()

    @property
    def in_flight_batches(self) -> int:
        return len(self._in_flight)

    @property
    def in_flight_messages(self) -> int:
        return sum(len(batch.acks) for batch in self._in_flight)

    def submit(self, messages: list[tuple[str, bytes]], acks: list[Ack]) -> None:
        """Hand one batch to the child (its messages are acked once its result is read)."""
        batch = _Batch(self._next_id, messages, acks)
        self._next_id += 1
        self._in_flight.append(batch)
        if self._conn is None:
            return  # (re)started later by results(), which sends it then
        with contextlib.suppress(OSError, ValueError):  # a dead child: results() resends
            self._conn.send((batch.id, batch.messages))

    def results(
        self, *, wait_for: int | None = None, timeout: float = 30.0
    ) -> list[tuple[BatchResult, list[Ack]]]:
        """Results ready now, oldest first; with ``wait_for``, waits (at most ``timeout``)
        until no more than ``wait_for`` batches are in flight."""
        out: list[tuple[BatchResult, list[Ack]]] = []
        deadline = time.monotonic() + timeout
        while self._in_flight:
            if self._conn is None:
                self._restart(out)
                if self._conn is None:
                    if wait_for is None or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                continue
            waiting = wait_for is not None and len(self._in_flight) > wait_for
            try:
                ready = self._conn.poll(
                    min(0.05, max(0.0, deadline - time.monotonic())) if waiting else 0
                )
                if ready:
                    self._take(self._conn.recv(), out)
                    continue
            except (OSError, EOFError):
                self._restart(out)
                continue
            if not self._proc.is_alive():
                self._restart(out)
                continue
            if not waiting or time.monotonic() > deadline:
                break
        return out

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to exit (after the batch it is on), then make sure it has."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    # internals ----------------------------------------------------------------------------

    def _take(
        self, message: tuple[int, BatchResult], out: list[tuple[BatchResult, list[Ack]]]
    ) -> None:
        batch_id, result = message
        batch = self._in_flight.popleft()
        if batch.id != batch_id:  # cannot happen with one pipe and one child, in order
            raise RuntimeError(f"decode process answered batch {batch_id}, expected {batch.id}")
        out.append((result, batch.acks))

    def _start(self) -> int:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child_main,
            args=(child, self._config),
            name="edgeloop-ingest-decode",
            daemon=True,
        )
        proc.start()
        child.close()
        deadline = time.monotonic() + self._start_timeout
        try:
            while not parent.poll(0.05):
                if not proc.is_alive():
                    raise DecodeProcessError(
                        f"the ingest decode process exited with code {proc.exitcode} on start"
                    )
                if time.monotonic() > deadline:
                    raise DecodeProcessError(
                        f"the ingest decode process was not ready after {self._start_timeout:.0f}s"
                    )
            try:
                kind, value = parent.recv()
            except (EOFError, OSError) as exc:
                proc.join(5)
                raise DecodeProcessError(
                    f"the ingest decode process exited with code {proc.exitcode} on start "
                    "(a script that starts it needs an `if __name__ == '__main__':` guard)"
                ) from exc
        except BaseException:
            proc.kill()
            proc.join(5)
            parent.close()
            raise
        if kind != "ready":
            proc.join(5)
            parent.close()
            raise DecodeProcessError(f"the ingest decode process failed to start: {value}")
        self._conn, self._proc = parent, proc
        return int(value)

    def _restart(self, out: list[tuple[BatchResult, list[Ack]]]) -> None:
        """Read what the dead child reported, start a new one, resend the rest in order."""
        if self._conn is not None:
            try:
                while self._conn.poll(0):
                    self._take(self._conn.recv(), out)
            except (OSError, EOFError):
                pass
            self._conn.close()
            self._conn = None
            if self._proc.is_alive():  # a broken pipe from a live child: do not keep two
                self._proc.kill()
            self._proc.join(5)
            self.restarts += 1
            log.error(
                "the ingest decode process (pid %s) died with code %s; restarting it and "
                "resubmitting %d un-acked batch(es)",
                self.pid,
                self._proc.exitcode,
                len(self._in_flight),
            )
        if time.monotonic() < self._retry_at:
            return
        try:
            self.pid = self._start()
        except DecodeProcessError as exc:
            self._retry_at = time.monotonic() + RESTART_BACKOFF_S
            log.error("%s; trying again in %.0fs", exc, RESTART_BACKOFF_S)
            return
        assert self._conn is not None
        for batch in self._in_flight:
            self._conn.send((batch.id, batch.messages))
