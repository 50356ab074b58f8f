"""The agent's crash-safe store-and-forward queue: everything it delivers at least once
(deployment events, telemetry windows, feedback) waits here, in one SQLite file, until the
broker (or, with ``delivery = "hub_ack"``, the hub) has it.

:class:`OutboundQueue` (``_outbound``) is the queue; its SQLite schema, migrations and
counter salvage are in ``_schema``, the disk-budget eviction rules in ``_budget``. The
surface is this module's ``__all__``.
"""

from edge_agent.queue._outbound import (
    DEFAULT_DROPPABLE,
    DEFAULT_MAX_BYTES,
    Acked,
    OutboundQueue,
    QueuedItem,
)
from edge_agent.queue._schema import ITEM_OVERHEAD

__all__ = [
    "DEFAULT_DROPPABLE",
    "DEFAULT_MAX_BYTES",
    "ITEM_OVERHEAD",
    "Acked",
    "OutboundQueue",
    "QueuedItem",
]
