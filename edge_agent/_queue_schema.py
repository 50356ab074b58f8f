"""The outbound queue's SQLite file: schema, in-place migrations of older files, the
settings every connection gets. :class:`edge_agent._queue.OutboundQueue` owns the rest."""

from __future__ import annotations

import sqlite3

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
