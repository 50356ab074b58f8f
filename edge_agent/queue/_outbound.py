"""Crash-safe store-and-forward queue for everything the agent delivers at least once.

One SQLite file (WAL, ``synchronous=FULL``) holds the queued messages and, per stream, the
last sequence number handed out and the drop counters. :meth:`OutboundQueue.append` allocates
the stream's next ``seq``, builds the payload with it and stores both in one transaction: a
``seq`` is used by exactly one stored message, never reused after a restart or power cut, and
never skipped (a ``payload_for`` that raises rolls the allocation back).

**Disk budget.** ``size_bytes()`` is the sum of the payload sizes plus
:data:`ITEM_OVERHEAD` per item. An append that would go over ``max_bytes`` evicts the oldest
items of the streams in ``droppable`` (default: telemetry first, then feedback; never
deployment events); rules in :mod:`edge_agent.queue._budget`. The new item is always stored.
Evictions are counted per stream in ``dropped()`` (lifetime) and in a "not yet reported"
counter that :meth:`OutboundQueue.take_dropped` returns and resets, for the next
``TelemetryWindow.dropped_windows``. Called from inside ``payload_for``, ``take_dropped``
joins the append's transaction, so the reset and the message that reports it commit together.

**Hub acks.** With ``delivery = "hub_ack"`` the session does not delete an item at the
broker's PUBACK: :meth:`OutboundQueue.mark_sent` stamps ``sent_at`` (persisted) and the item
stays until :meth:`OutboundQueue.ack_seqs` removes it for the hub's ``DeliveryAck``.
``peek(sent_before=T)`` returns the items never sent or sent before ``T`` (due again). Items
awaiting an ack count against the budget and are evicted first, oldest first, but not
counted as drops: the broker had them, so the hub most probably stored them (``gaps``
shows it when not).

**Corruption.** A file SQLite cannot open, or that fails ``PRAGMA quick_check``, is moved
aside as ``<path>.corrupt-<unix ms>`` (with its WAL) and a fresh queue is started; the same
happens when an operation hits ``SQLITE_CORRUPT``/``SQLITE_NOTADB`` later. The stream
counters are salvaged from the old file when it can still be read (its undelivered items,
when they can be counted, are added to the drop counters); otherwise every stream restarts
just above ``<unix ms>`` (above any number it can have used, so the hub's dedupe never
swallows new messages) and an error is logged. If no file can be opened at all the queue
runs in memory, loudly: the agent keeps working without durability. Other SQLite errors (a
full disk) propagate from the call. ``payload_for`` runs under the queue's lock, inside the
transaction: keep it short; after a recovery it is called once more with the new ``seq``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge_agent.queue._budget import evict, victims_for
from edge_agent.queue._schema import ITEM_OVERHEAD, prepare, salvage_counters

__all__ = ["DEFAULT_DROPPABLE", "DEFAULT_MAX_BYTES", "ITEM_OVERHEAD", "OutboundQueue", "QueuedItem"]

log = logging.getLogger("edge_agent._queue")  # the name the queue has always logged under

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_DROPPABLE: tuple[str, ...] = ("telemetry", "feedback")
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueuedItem:
    """One stored message: ``id`` is the queue's handle for :meth:`OutboundQueue.ack`."""

    id: int
    stream: str
    seq: int
    payload: bytes
    created_at: float
    sent_at: float | None = None  # when the broker PUBACKed it (hub_ack delivery only)


@dataclass(frozen=True, slots=True)
class Acked:
    """What a hub ack removed: how many items, and when those sent exactly once were sent."""

    count: int
    sent_once_at: tuple[float, ...]


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


class OutboundQueue:
    """Durable FIFO of outbound messages with per-stream sequence numbers (thread-safe)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        droppable: Sequence[str] = DEFAULT_DROPPABLE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.droppable = tuple(droppable)
        self._clock = clock
        self._lock = threading.RLock()
        self._in_append = False
        self._taken = 0  # drops take_dropped handed to the item being appended
        self._total = 0
        self._conn = self._open()

    # ----------------------------------------------------------------- opening
    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            total = prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._total = total
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect(str(self.path))
        except (sqlite3.DatabaseError, OSError) as exc:
            return self._start_fresh(exc)

    def _start_fresh(self, exc: BaseException) -> sqlite3.Connection:
        counters = salvage_counters(getattr(self, "_conn", None), self.path)
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time() * 1000)}")
        log.error("outbound queue %s is unusable (%s); moved aside to %s", self.path, exc, aside)
        try:
            if self.path.exists():
                self.path.rename(aside)
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists():  # part of the old data: keep it beside the old file
                wal.rename(aside.with_name(aside.name + "-wal"))
            self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
            conn = self._connect(str(self.path))
        except (sqlite3.DatabaseError, OSError) as again:
            log.error(
                "cannot create %s (%s): queue runs IN MEMORY, nothing survives", self.path, again
            )
            conn = self._connect(":memory:")
        if counters is None:
            floor = int(time.time() * 1000)
            log.error("stream counters lost: sequence numbers restart at %d", floor)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq_floor', ?)", (floor,))
        else:
            conn.executemany(
                "INSERT OR REPLACE INTO streams (stream, last_seq, dropped, unreported)"
                " VALUES (?, ?, ?, ?)",
                counters,
            )
            log.warning("salvaged sequence counters for %d stream(s)", len(counters))
        return conn

    def _guard(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` under the lock; on corruption start fresh and retry once."""
        with self._lock:
            try:
                return operation()
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc) or self._in_append:
                    raise
                self._conn = self._start_fresh(exc)
                return operation()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------- API
    def append(self, *, stream: str, payload_for: Callable[[int], bytes]) -> QueuedItem:
        """Store ``payload_for(seq)`` under the stream's next ``seq``; durable when it returns."""
        if not stream:
            raise ValueError("stream must be non-empty")

        def run() -> QueuedItem:
            total_before = self._total
            try:
                with self._transaction() as conn:
                    self._in_append, self._taken = True, 0
                    seq = self._next_seq(conn, stream)
                    payload = bytes(payload_for(seq))
                    size = len(payload) + ITEM_OVERHEAD
                    self._total -= evict(
                        conn,
                        victims=victims_for(stream, self.droppable),
                        need=self._total + size - self.max_bytes,
                    )
                    created_at = self._clock()
                    cursor = conn.execute(
                        "INSERT INTO items (stream, seq, payload, created_at, carries)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (stream, seq, payload, created_at, self._taken),
                    )
                    conn.execute("UPDATE streams SET last_seq = ? WHERE stream = ?", (seq, stream))
                    self._total += size
            except BaseException:
                self._total = total_before
                raise
            finally:
                self._in_append = False
            assert cursor.lastrowid is not None
            return QueuedItem(cursor.lastrowid, stream, seq, payload, created_at)

        return self._guard(run)

    def _next_seq(self, conn: sqlite3.Connection, stream: str) -> int:
        row = conn.execute("SELECT last_seq FROM streams WHERE stream = ?", (stream,)).fetchone()
        if row is not None:
            return int(row[0]) + 1
        floor = conn.execute("SELECT value FROM meta WHERE key = 'seq_floor'").fetchone()
        start = int(floor[0]) if floor else 0
        conn.execute("INSERT INTO streams (stream, last_seq) VALUES (?, ?)", (stream, start))
        return start + 1

    def peek(self, *, limit: int = 100, sent_before: float | None = None) -> list[QueuedItem]:
        """Up to ``limit`` stored items, oldest first (they stay queued until acked).

        ``sent_before``: only items never sent or sent before that time (and, should the
        clock have gone back, those stamped over an hour ahead)."""

        def run() -> list[QueuedItem]:
            columns = "SELECT id, stream, seq, payload, created_at, sent_at FROM items"
            args: tuple[float, ...]
            if sent_before is None:
                query, args = f"{columns} ORDER BY id LIMIT ?", (limit,)
            else:
                query = (
                    f"{columns} WHERE sent_at IS NULL OR sent_at < ? OR sent_at > ?"
                    " ORDER BY id LIMIT ?"
                )
                args = (sent_before, self._clock() + 3600.0, limit)
            return [
                QueuedItem(int(i), s, int(q), bytes(p), float(c), None if t is None else float(t))
                for i, s, q, p, c, t in self._conn.execute(query, args).fetchall()
            ]

        return self._guard(run)

    def mark_sent(self, item_id: int) -> None:
        """The broker has the item (hub_ack delivery): keep it, stamped, until the hub acks."""

        def run() -> None:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE items SET sent_at = ?, sends = sends + 1 WHERE id = ?",
                    (self._clock(), item_id),
                )

        self._guard(run)

    def ack_seqs(self, stream: str, first: int, last: int) -> int:
        """Delete the stream's items with ``first <= seq <= last`` (the hub handled them,
        sent or not); returns how many there were."""
        return self.ack_range(stream, first, last).count

    def ack_range(self, stream: str, first: int, last: int) -> Acked:
        """:meth:`ack_seqs`, also saying when the removed items that were sent exactly once
        were sent (the hub's ack latency, for :class:`edge_agent.AckTimeout`)."""

        def run() -> Acked:
            with self._transaction() as conn:
                rows = conn.execute(
                    "DELETE FROM items WHERE stream = ? AND seq BETWEEN ? AND ?"
                    " RETURNING length(payload), sent_at, sends",
                    (stream, first, last),
                ).fetchall()
            self._total -= sum(int(r[0]) + ITEM_OVERHEAD for r in rows)
            once = tuple(float(r[1]) for r in rows if r[2] == 1 and r[1] is not None)
            return Acked(count=len(rows), sent_once_at=once)

        return self._guard(run)

    def awaiting(self) -> int:
        """Items the broker has (PUBACKed) that wait for the hub's ack."""
        return self._guard(
            lambda: int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM items WHERE sent_at IS NOT NULL"
                ).fetchone()[0]
            )
        )

    def oldest_sent_at(self) -> float | None:
        """When the longest-waiting item the broker has (awaiting the hub's ack) was sent."""
        return self._guard(
            lambda: self._conn.execute(
                "SELECT MIN(sent_at) FROM items WHERE sent_at IS NOT NULL"
            ).fetchone()[0]
        )

    def ack(self, item_id: int) -> None:
        """Delete a delivered item; acking an unknown or already acked id does nothing."""

        def run() -> None:
            with self._transaction() as conn:
                row = conn.execute(
                    "DELETE FROM items WHERE id = ? RETURNING length(payload)", (item_id,)
                ).fetchone()
            if row is not None:
                self._total -= int(row[0]) + ITEM_OVERHEAD

        self._guard(run)

    def __len__(self) -> int:
        return self._guard(
            lambda: int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        )

    def size_bytes(self) -> int:
        """Bytes charged against ``max_bytes``: payloads plus ``ITEM_OVERHEAD`` per item."""
        with self._lock:
            return self._total

    def dropped(self, stream: str | None = None) -> int:
        """Items evicted over the queue's lifetime, for one stream or all of them."""

        def run() -> int:
            if stream is None:
                row = self._conn.execute("SELECT COALESCE(SUM(dropped), 0) FROM streams").fetchone()
            else:
                row = self._conn.execute(
                    "SELECT dropped FROM streams WHERE stream = ?", (stream,)
                ).fetchone()
            return int(row[0]) if row else 0

        return self._guard(run)

    def last_seqs(self) -> dict[str, int]:
        """The last ``seq`` handed out per stream (what the device has produced so far)."""

        def run() -> dict[str, int]:
            rows = self._conn.execute("SELECT stream, last_seq FROM streams").fetchall()
            return {str(stream): int(seq) for stream, seq in rows}

        return self._guard(run)

    def unreported(self, stream: str) -> int:
        """Evictions from ``stream`` that no stored or sent item reports yet (the next one
        will); does not reset anything."""

        def run() -> int:
            row = self._conn.execute(
                "SELECT unreported FROM streams WHERE stream = ?", (stream,)
            ).fetchone()
            return int(row[0]) if row else 0

        return self._guard(run)

    def take_dropped(self, stream: str) -> int:
        """Evictions from ``stream`` not reported yet; resets the count (persisted)."""

        def read_and_reset(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT unreported FROM streams WHERE stream = ?", (stream,)
            ).fetchone()
            if not row or not row[0]:
                return 0
            conn.execute("UPDATE streams SET unreported = 0 WHERE stream = ?", (stream,))
            return int(row[0])

        def run() -> int:
            if self._in_append:  # inside payload_for: commit with the item that reports it
                taken = read_and_reset(self._conn)
                self._taken += taken
                return taken
            with self._transaction() as conn:
                return read_and_reset(conn)

        return self._guard(run)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> OutboundQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
