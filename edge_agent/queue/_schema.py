"""The outbound queue's SQLite file: schema, in-place migrations of older files, the
settings every connection gets. :class:`edge_agent.queue.OutboundQueue` owns the rest."""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from pathlib import Path

ITEM_OVERHEAD = 64  # bytes charged per item on top of its payload (row and index overhead)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a late ack cannot hit a new item
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    carries INTEGER NOT NULL DEFAULT 0,  -- earlier drops this item reports (take_dropped)
    sent_at REAL,  -- delivery = "hub_ack": when the broker PUBACKed it (NULL: not yet)
    sends INTEGER NOT NULL DEFAULT 0,  -- hub_ack: PUBACKed publishes (Karn: time only 1s)
    UNIQUE (stream, seq)
);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    unreported INTEGER NOT NULL DEFAULT 0
);
-- seq_floor: set when a corrupt file's counters were lost; new streams start above it
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# Columns added after the first release: a file from before gets them in place.
_ADDED_COLUMNS = (
    ("carries", "INTEGER NOT NULL DEFAULT 0"),
    ("sent_at", "REAL"),
    ("sends", "INTEGER NOT NULL DEFAULT 0"),
)


def prepare(conn: sqlite3.Connection) -> int:
    """Set up a fresh connection: pragmas, integrity check, schema and migrations; returns
    the bytes the stored items are charged (payloads + ``ITEM_OVERHEAD`` each)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA journal_size_limit=4194304")
    row = conn.execute("PRAGMA quick_check").fetchone()
    if row is None or row[0] != "ok":
        raise sqlite3.DatabaseError(f"quick_check failed: {row[0] if row else None}")
    conn.executescript(SCHEMA)
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(items)").fetchall()}
    for name, declaration in _ADDED_COLUMNS:
        if name not in columns:
            conn.execute(f"ALTER TABLE items ADD COLUMN {name} {declaration}")
    total = conn.execute(
        "SELECT COALESCE(SUM(length(payload)), 0) + ? * COUNT(*) FROM items", (ITEM_OVERHEAD,)
    ).fetchone()[0]
    return int(total)


def salvage_counters(
    conn: sqlite3.Connection | None, path: Path
) -> list[tuple[str, int, int, int]] | None:
    """From a damaged queue (``conn``, else ``path`` opened read-only, closed either way):
    per stream ``(stream, last_seq, dropped, unreported)``, the items still stored counted as
    dropped; ``None`` when even that cannot be read."""
    try:
        conn = conn or sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            rows = conn.execute(
                "SELECT stream, last_seq, dropped, unreported FROM streams"
            ).fetchall()
            lost: dict[str, int] = {}  # undelivered items left behind count as dropped
            with suppress(sqlite3.Error):
                query = "SELECT stream, COUNT(*) FROM items GROUP BY stream"
                lost = {str(s): int(n) for s, n in conn.execute(query).fetchall()}
        finally:
            conn.close()
        return [
            (str(s), int(q), int(d) + lost.get(s, 0), int(u) + lost.get(s, 0))
            for s, q, d, u in rows
        ]
    except (sqlite3.Error, ValueError, TypeError):
        return None
