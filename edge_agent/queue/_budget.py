"""The outbound queue's disk budget: which items an append over ``max_bytes`` evicts.

An item only evicts streams listed in ``droppable`` before its own, or its own stream (so
telemetry never evicts feedback); a stream not in ``droppable`` (deployment events) is
never evicted but may evict everything droppable. Within a stream, items already sent and
awaiting the hub's ack go first (the hub most probably has them: not counted as drops),
then the oldest. Every evicted unsent item is counted per stream (``dropped``, lifetime)
and in ``unreported``, together with the drops it was itself carrying, so the next item
reports them all. Runs inside :meth:`edge_agent.queue.OutboundQueue.append`'s transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from edge_agent.queue._schema import ITEM_OVERHEAD

log = logging.getLogger("edge_agent._queue")  # the name the queue has always logged under

_BATCH = 256


def victims_for(stream: str, droppable: Sequence[str]) -> tuple[str, ...]:
    """The streams an item of ``stream`` may evict, in eviction order."""
    order = tuple(droppable)
    return order[: order.index(stream) + 1] if stream in order else order


def evict(conn: sqlite3.Connection, *, victims: Sequence[str], need: int) -> int:
    """Delete items of ``victims`` (in order) until ``need`` bytes are free or nothing is
    left to evict; returns the bytes freed (payloads plus ``ITEM_OVERHEAD`` each)."""
    freed = 0
    for victim in victims:
        if need <= 0:
            break
        dropped = carried = 0
        while need > 0:
            rows = conn.execute(  # sent (awaiting a hub ack) first: no loss to report
                "SELECT id, length(payload), carries, sent_at IS NOT NULL FROM items"
                " WHERE stream = ? ORDER BY sent_at IS NULL, seq LIMIT ?",
                (victim, _BATCH),
            ).fetchall()
            if not rows:
                break
            chosen = []
            for item_id, length, carries, sent in rows:
                if need <= 0:
                    break
                chosen.append((item_id,))
                if not sent:  # a sent item's report most probably reached the hub
                    carried += int(carries)
                    dropped += 1
                need -= length + ITEM_OVERHEAD
                freed += length + ITEM_OVERHEAD
            conn.executemany("DELETE FROM items WHERE id = ?", chosen)
        if dropped:
            # an evicted item may itself have been the one reporting earlier drops: its
            # count goes back to "unreported", so the next item reports them all
            conn.execute(
                "UPDATE streams SET dropped = dropped + ?, unreported = unreported + ?"
                " WHERE stream = ?",
                (dropped, dropped + carried, victim),
            )
            log.warning("outbound queue over budget: dropped %d %s item(s)", dropped, victim)
    return freed
