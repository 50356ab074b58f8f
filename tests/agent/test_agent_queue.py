"""The agent's store-and-forward queue: sequence numbers, durability, budget, corruption."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_agent.queue import ITEM_OVERHEAD, OutboundQueue

REPO = Path(__file__).resolve().parents[2]


def seqs(queue: OutboundQueue, stream: str) -> list[int]:
    return [item.seq for item in queue.peek(limit=100_000) if item.stream == stream]


def test_sequence_numbers_continue_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with OutboundQueue(path) as queue:
        for _ in range(3):
            queue.append(stream="telemetry", payload_for=lambda seq: f"t{seq}".encode())
        queue.append(stream="feedback", payload_for=lambda seq: f"f{seq}".encode())
        assert [i.payload for i in queue.peek()] == [b"t1", b"t2", b"t3", b"f1"]
        for item in queue.peek():
            queue.ack(item.id)
        assert len(queue) == 0 and queue.size_bytes() == 0
    with OutboundQueue(path) as queue:  # counters survive even when every item was delivered
        assert queue.append(stream="telemetry", payload_for=lambda s: b"x").seq == 4
        assert queue.append(stream="feedback", payload_for=lambda s: b"x").seq == 2
        assert queue.append(stream="events", payload_for=lambda s: b"x").seq == 1


def test_failed_payload_rolls_back_the_sequence_number(tmp_path: Path) -> None:
    with OutboundQueue(tmp_path / "q.db") as queue:
        queue.append(stream="telemetry", payload_for=lambda s: b"a")

        def boom(seq: int) -> bytes:
            raise RuntimeError("serialization failed")

        with pytest.raises(RuntimeError):
            queue.append(stream="telemetry", payload_for=boom)
        item = queue.append(stream="telemetry", payload_for=lambda s: s.to_bytes(2, "big"))
        assert item.seq == 2 and item.payload == b"\x00\x02" and len(queue) == 2


WRITER = """
import sys
from pathlib import Path
from edge_agent.queue import OutboundQueue

queue = OutboundQueue(Path(sys.argv[1]))
while True:
    item = queue.append(stream="telemetry", payload_for=lambda seq: b"w" * 200 + str(seq).encode())
    print(item.seq, flush=True)
"""


def run_and_kill(path: Path, *, appends: int) -> list[int]:
    """Start a writer, SIGKILL it after ``appends`` returned appends, return every printed seq."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    printed = []
    try:
        for line in proc.stdout:
            printed.append(int(line))
            if len(printed) >= appends:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-way through the next append
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    printed += [int(line) for line in rest.split()]
    assert len(printed) >= appends, "writer died early"
    return printed


def test_sigkilled_writer_loses_nothing_it_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    printed = run_and_kill(path, appends=60) + run_and_kill(path, appends=40)
    with OutboundQueue(path) as queue:
        stored = seqs(queue, "telemetry")
        assert set(printed) <= set(stored)  # every append that returned is there
        assert stored == list(range(1, len(stored) + 1))  # contiguous, no duplicates
        assert all(i.payload.endswith(str(i.seq).encode()) for i in queue.peek(limit=10_000))
        assert queue.append(stream="telemetry", payload_for=lambda s: b"").seq == len(stored) + 1


def test_ack_removes_and_is_idempotent(tmp_path: Path) -> None:
    with OutboundQueue(tmp_path / "q.db") as queue:
        a = queue.append(stream="events", payload_for=lambda s: b"a" * 10)
        b = queue.append(stream="events", payload_for=lambda s: b"b" * 20)
        assert queue.size_bytes() == 30 + 2 * ITEM_OVERHEAD
        queue.ack(a.id)
        queue.ack(a.id)
        assert queue.peek() == [b] and len(queue) == 1
        queue.ack(b.id)
        c = queue.append(stream="events", payload_for=lambda s: b"c")
        assert c.id not in (a.id, b.id)  # ids are never reused: a late ack cannot hit c
        queue.ack(b.id)
        assert queue.peek() == [c] and queue.size_bytes() == 1 + ITEM_OVERHEAD


def test_budget_drops_oldest_telemetry_and_never_events(tmp_path: Path) -> None:
    item = 100 + ITEM_OVERHEAD
    path = tmp_path / "q.db"
    with OutboundQueue(path, max_bytes=6 * item) as queue:
        for stream in ("events", "telemetry", "telemetry", "events", "telemetry", "feedback"):
            queue.append(stream=stream, payload_for=lambda s: b"x" * 100)
        assert queue.size_bytes() == 6 * item and queue.dropped() == 0
        queue.append(stream="telemetry", payload_for=lambda s: b"x" * 100)
        assert seqs(queue, "telemetry") == [2, 3, 4]  # the oldest telemetry went
        for _ in range(3):
            queue.append(stream="events", payload_for=lambda s: b"x" * 100)
        assert seqs(queue, "events") == [1, 2, 3, 4, 5]
        assert seqs(queue, "telemetry") == [] and seqs(queue, "feedback") == [1]
        queue.append(stream="events", payload_for=lambda s: b"x" * 100)  # feedback goes last
        assert seqs(queue, "feedback") == [] and queue.size_bytes() == 6 * item
        queue.append(stream="events", payload_for=lambda s: b"x" * 100)  # never dropped
        assert seqs(queue, "events") == [1, 2, 3, 4, 5, 6, 7] and queue.size_bytes() == 7 * item
        assert (queue.dropped("telemetry"), queue.dropped("feedback"), queue.dropped()) == (4, 1, 5)
        assert queue.take_dropped("telemetry") == 4 and queue.take_dropped("telemetry") == 0
    with OutboundQueue(path, max_bytes=6 * item) as queue:
        assert queue.dropped("telemetry") == 4 and queue.take_dropped("feedback") == 1
        assert queue.take_dropped("feedback") == 0 and queue.dropped("events") == 0


def test_telemetry_never_evicts_feedback(tmp_path: Path) -> None:
    with OutboundQueue(tmp_path / "q.db", max_bytes=2 * (10 + ITEM_OVERHEAD)) as queue:
        for _ in range(2):
            queue.append(stream="feedback", payload_for=lambda s: b"f" * 10)
        queue.append(stream="telemetry", payload_for=lambda s: b"t" * 10)  # kept, over budget
        queue.append(stream="telemetry", payload_for=lambda s: b"t" * 10)  # evicts telemetry 1
        assert seqs(queue, "feedback") == [1, 2] and seqs(queue, "telemetry") == [2]
        assert queue.dropped("feedback") == 0 and queue.dropped("telemetry") == 1


def test_take_dropped_inside_payload_for_commits_with_the_item(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    budget = 2 * (10 + ITEM_OVERHEAD)
    with OutboundQueue(path, max_bytes=budget) as queue:
        for _ in range(4):
            queue.append(stream="telemetry", payload_for=lambda s: b"t" * 10)

        def failing(seq: int) -> bytes:
            assert queue.take_dropped("telemetry") == 2
            raise RuntimeError("crash after taking the count")

        with pytest.raises(RuntimeError):
            queue.append(stream="telemetry", payload_for=failing)
        item = queue.append(  # the rollback kept the count for the next try
            stream="telemetry",
            payload_for=lambda s: b"%09d" % queue.take_dropped("telemetry"),
        )
        assert item.payload == b"000000002" and item.seq == 5
    with OutboundQueue(path, max_bytes=budget) as queue:
        assert queue.take_dropped("telemetry") == 1  # the append above evicted seq 3


def test_corrupt_file_is_moved_aside_and_counters_salvaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "q.db"
    with OutboundQueue(path) as queue:
        for _ in range(200):
            queue.append(stream="telemetry", payload_for=lambda s: os.urandom(1000))
    with sqlite3.connect(path) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:  # smash the last page (items data, not the counters)
        f.seek(-page, os.SEEK_END)
        f.write(b"\xff" * page)
    with caplog.at_level(logging.ERROR), OutboundQueue(path) as queue:
        assert len(queue) == 0
        assert queue.append(stream="telemetry", payload_for=lambda s: b"x").seq == 201
    assert "unusable" in caplog.text
    assert len(list(tmp_path.glob("q.db.corrupt-*[0-9]"))) == 1


@pytest.mark.parametrize("kind", ["garbage", "directory"])
def test_unreadable_file_starts_fresh_above_every_old_number(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "q.db"
    if kind == "garbage":
        path.write_bytes(b"this is not a database" * 500)
    else:
        path.mkdir()
    with OutboundQueue(path) as queue:
        seq = queue.append(stream="telemetry", payload_for=lambda s: b"x").seq
        assert seq > 1_600_000_000_000  # counters lost: numbers restart above unix ms
        assert queue.append(stream="telemetry", payload_for=lambda s: b"x").seq == seq + 1
        later = queue.append(stream="feedback", payload_for=lambda s: b"x").seq
        assert later > 1_600_000_000_000
    assert path.is_file() and len(list(tmp_path.glob("q.db.corrupt-*[0-9]"))) == 1
    with OutboundQueue(path) as queue:  # the floor persists for streams not seen yet
        assert queue.append(stream="events", payload_for=lambda s: b"x").seq > 1_600_000_000_000
        assert queue.append(stream="telemetry", payload_for=lambda s: b"x").seq == seq + 2


def test_concurrent_appends_get_unique_contiguous_numbers(tmp_path: Path) -> None:
    queue = OutboundQueue(tmp_path / "q.db")
    got: dict[int, list[int]] = {}
    start = threading.Barrier(4)

    def writer(n: int) -> None:
        start.wait()
        got[n] = [
            queue.append(stream="telemetry", payload_for=lambda s: str(s).encode()).seq
            for _ in range(40)
        ]

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = sorted(s for values in got.values() for s in values)
    assert everything == list(range(1, 161))
    assert all(values == sorted(values) for values in got.values())
    assert [i.payload for i in queue.peek(limit=1000)] == [str(s).encode() for s in everything]
    queue.close()


class CorruptOnce:
    """A connection whose next ``SELECT ... FROM items`` reports a malformed database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.armed = conn, True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.armed and sql.startswith("SELECT id, stream"):
            self.armed = False
            exc = sqlite3.DatabaseError("database disk image is malformed")
            exc.sqlite_errorcode = 11
            raise exc
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_corruption_found_while_running_restarts_the_queue(tmp_path: Path) -> None:
    with OutboundQueue(tmp_path / "q.db") as queue:
        for _ in range(3):
            queue.append(stream="feedback", payload_for=lambda s: b"f")
        queue._conn = CorruptOnce(queue._conn)  # type: ignore[assignment]
        assert queue.peek() == [] and queue.size_bytes() == 0  # moved aside, then retried
        assert queue.append(stream="feedback", payload_for=lambda s: b"f").seq == 4
        assert queue.dropped("feedback") == 3 and queue.take_dropped("feedback") == 3
    assert len(list(tmp_path.glob("q.db.corrupt-*[0-9]"))) == 1


def test_a_queue_file_from_before_the_carries_column_opens_and_keeps_its_items(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,"
            " seq INTEGER NOT NULL, payload BLOB NOT NULL, created_at REAL NOT NULL,"
            " UNIQUE (stream, seq));"
            "CREATE TABLE streams (stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL DEFAULT 0,"
            " dropped INTEGER NOT NULL DEFAULT 0, unreported INTEGER NOT NULL DEFAULT 0);"
            "INSERT INTO items (stream, seq, payload, created_at)"
            " VALUES ('telemetry', 1, x'01', 0);"
            "INSERT INTO streams (stream, last_seq) VALUES ('telemetry', 1);"
        )
    with OutboundQueue(path, max_bytes=200) as queue:
        assert [i.seq for i in queue.peek()] == [1]
        queue.append(stream="telemetry", payload_for=lambda seq: b"x" * 100)  # evicts seq 1
        assert queue.dropped("telemetry") == 1 and queue.unreported("telemetry") == 1
        assert queue.take_dropped("telemetry") == 1
    with OutboundQueue(path) as queue:  # and sent_at (hub acks) came after carries
        queue.mark_sent(queue.peek()[0].id)
        assert queue.awaiting() == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sent_items_wait_for_the_hub_ack_and_are_due_again_after_the_timeout(
    tmp_path: Path,
) -> None:
    clock = Clock()
    path = tmp_path / "q.db"
    with OutboundQueue(path, clock=clock) as queue:
        items = [
            queue.append(stream="telemetry", payload_for=lambda seq: f"t{seq}".encode())
            for _ in range(4)
        ]
        queue.append(stream="feedback", payload_for=lambda seq: b"f")
        for item in items:
            queue.mark_sent(item.id)
        assert queue.awaiting() == 4 and len(queue) == 5
        # only what was never sent (or sent before the cut-off) is due
        assert [i.stream for i in queue.peek(sent_before=clock.now)] == ["feedback"]
        clock.now += 30
        due = queue.peek(sent_before=clock.now - 10)
        assert [i.seq for i in due if i.stream == "telemetry"] == [1, 2, 3, 4]
        assert all(i.sent_at == 1000.0 for i in due if i.stream == "telemetry")
        clock.now -= 7200  # the clock went back: a stamp far ahead is due, not stuck
        assert len(queue.peek(sent_before=0.0)) == 5
        clock.now += 7200
        assert queue.ack_seqs("telemetry", 2, 3) == 2
        assert queue.ack_seqs("telemetry", 2, 3) == 0  # a repeated ack does nothing
        assert seqs(queue, "telemetry") == [1, 4] and queue.awaiting() == 2
        before = queue.size_bytes()
    with OutboundQueue(path, clock=clock) as queue:  # sent_at is persisted
        assert queue.awaiting() == 2 and queue.size_bytes() == before
        assert queue.ack_seqs("feedback", 1, 1) == 1  # an ack also covers an unsent item


def test_items_awaiting_the_hub_count_against_the_budget_and_go_first_uncounted(
    tmp_path: Path,
) -> None:
    size = 100 + ITEM_OVERHEAD
    with OutboundQueue(tmp_path / "q.db", max_bytes=4 * size) as queue:
        items = [
            queue.append(stream="telemetry", payload_for=lambda seq: b"x" * 100) for _ in range(4)
        ]
        queue.mark_sent(items[2].id)  # the broker has seq 3
        queue.append(stream="telemetry", payload_for=lambda seq: b"x" * 100)  # over budget
        assert seqs(queue, "telemetry") == [1, 2, 4, 5]  # the sent one went first
        assert queue.dropped("telemetry") == 0  # and it is no loss to report
        queue.append(stream="telemetry", payload_for=lambda seq: b"x" * 100)
        assert seqs(queue, "telemetry") == [2, 4, 5, 6]
        assert queue.dropped("telemetry") == 1 and queue.take_dropped("telemetry") == 1
