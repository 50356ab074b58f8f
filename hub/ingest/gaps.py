"""Loss made visible: missing sequence numbers per device and stream.

A seq between 1 and the highest one seen that never arrived is loss in transit (or still on
its way: buffered windows may arrive late). Windows the agent discarded itself are not
gaps in the numbers; they are reported separately as the sum of ``dropped_windows``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.engine import Engine

from hub.tables.fleet import IngestSeq, TelemetryWindowRow


@dataclass(frozen=True, kw_only=True)
class SeqGap:
    """One device's stream: what arrived, what is missing, what the agent dropped itself."""

    device_id: str
    stream: str  # telemetry | feedback
    max_seq: int
    received: int
    missing: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    dropped_windows: int = 0  # telemetry only: discarded on the device, not lost in transit

    @property
    def missing_count(self) -> int:
        return sum(last - first + 1 for first, last in self.missing)

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["missing"] = [list(r) for r in self.missing]
        return {**body, "missing_count": self.missing_count}


def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def gaps(engine: Engine, device_id: str | None = None) -> list[SeqGap]:
    """One :class:`SeqGap` per (device, stream) seen, ordered; ``device_id`` narrows to one."""
    seqs, windows = _table(IngestSeq), _table(TelemetryWindowRow)
    previous = func.lag(seqs.c.seq, 1, 0).over(
        partition_by=(seqs.c.device_id, seqs.c.stream), order_by=seqs.c.seq
    )
    ordered = select(seqs.c.device_id, seqs.c.stream, seqs.c.seq, previous.label("prev"))
    summary = select(seqs.c.device_id, seqs.c.stream, func.max(seqs.c.seq), func.count()).group_by(
        seqs.c.device_id, seqs.c.stream
    )
    dropped = select(windows.c.device_id, func.sum(windows.c.dropped_windows)).group_by(
        windows.c.device_id
    )
    if device_id is not None:
        ordered = ordered.where(seqs.c.device_id == device_id)
        summary = summary.where(seqs.c.device_id == device_id)
        dropped = dropped.where(windows.c.device_id == device_id)
    holes = ordered.subquery()
    jumps = (
        select(holes.c.device_id, holes.c.stream, holes.c.prev, holes.c.seq)
        .where(holes.c.seq - holes.c.prev > 1)
        .order_by(holes.c.device_id, holes.c.stream, holes.c.seq)
    )
    with engine.connect() as conn:
        missing: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for dev, stream, prev, seq in conn.execute(jumps):
            missing.setdefault((dev, stream), []).append((int(prev) + 1, int(seq) - 1))
        drops = {dev: int(total or 0) for dev, total in conn.execute(dropped)}
        rows = conn.execute(summary.order_by(seqs.c.device_id, seqs.c.stream)).all()
    return [
        SeqGap(
            device_id=dev,
            stream=stream,
            max_seq=int(max_seq),
            received=int(count),
            missing=missing.get((dev, stream), []),
            dropped_windows=drops.get(dev, 0) if stream == "telemetry" else 0,
        )
        for dev, stream, max_seq, count in rows
    ]
