"""Telemetry retention: roll raw windows up into hourly sums, then delete them.

Each chunk of old windows is added to its ``telemetry_rollup`` rows and deleted **in the
same transaction**, so a window is counted exactly once: running it twice (or after a
crash half-way) never double counts, and a late window for an hour already rolled up is
added to that hour. Run it from one process (``hub serve`` runs it hourly, with the other
tables' retention in ``hub.retention.service``, when ``EDGELOOP_TELEMETRY_RETENTION_S`` > 0).

A window that monitoring has not read yet (its id is past the ``monitor_cursor`` of its
``model@version``) is never pruned, however old; with ``monitored=True`` (monitoring runs)
neither is any window of a version monitoring has no cursor for yet.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, and_, delete, or_, select
from sqlalchemy.engine import Engine

from hub.ingest._sql import table
from hub.tables.fleet import TelemetryWindowRow
from hub.tables.monitoring import CURSOR_HEAD, MonitorCursor
from hub.tables.rollups import TelemetryRollup

CHUNK = 2000


@dataclass(frozen=True, kw_only=True)
class RetentionResult:
    rolled_up: int  # raw windows folded into roll-ups (and deleted)
    hours: int  # roll-up rows created or updated


@dataclass
class _Acc:
    windows: int = 0
    count: int = 0
    errors: int = 0
    latency: dict[str, Any] = field(default_factory=dict)
    latency_mismatched: int = 0
    output_counts: list[int] = field(default_factory=list)


def _tables() -> tuple[Table, Table]:
    return table(TelemetryWindowRow), table(TelemetryRollup)


def _hour(at: datetime) -> datetime:
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def _add_counts(into: list[int], counts: list[int]) -> list[int]:
    size = max(len(into), len(counts))
    return [
        (into[i] if i < len(into) else 0) + (counts[i] if i < len(counts) else 0)
        for i in range(size)
    ]


def _add_latency(acc: _Acc, latency: dict[str, Any]) -> None:
    edges, counts = latency.get("edges", []), latency.get("counts", [])
    if not counts:
        return
    if not acc.latency:
        acc.latency = {"edges": list(edges), "counts": list(counts)}
    elif acc.latency["edges"] == list(edges) and len(acc.latency["counts"]) == len(counts):
        acc.latency["counts"] = _add_counts(acc.latency["counts"], counts)
    else:
        acc.latency_mismatched += 1


def read_by_monitoring(rows: Table, *, stream: str, monitored: bool) -> ColumnElement[bool]:
    """A condition on ``rows`` (which has ``id``, ``model``, ``version``): monitoring has read
    the row, i.e. its id is at or before its version's read cursor for ``stream``. Without a
    cursor for the version: true unless ``monitored`` (then monitoring will read it later)."""
    cursor = table(MonitorCursor)
    last_id = (
        select(cursor.c.last_id)
        .where(
            cursor.c.stream == stream,
            cursor.c.scope == CURSOR_HEAD,
            cursor.c.model == rows.c.model,
            cursor.c.version == rows.c.version,
        )
        .scalar_subquery()
    )
    read = rows.c.id <= last_id
    return read if monitored else or_(last_id.is_(None), read)


def rollup_and_prune(
    engine: Engine, *, older_than: datetime, monitored: bool = False
) -> RetentionResult:
    """Fold every window that started before ``older_than`` into hourly roll-ups; delete it.

    Windows monitoring still has to read stay (:func:`read_by_monitoring`)."""
    windows, _ = _tables()
    prunable = and_(
        windows.c.window_start < older_than,
        read_by_monitoring(windows, stream="telemetry", monitored=monitored),
    )
    rolled, hours = 0, set[tuple[str, str, str, datetime]]()
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(
                    windows.c.id,
                    windows.c.model,
                    windows.c.version,
                    windows.c.group,
                    windows.c.window_start,
                    windows.c.count,
                    windows.c.errors,
                    windows.c.latency,
                    windows.c.output_counts,
                )
                .where(prunable)
                .order_by(windows.c.id)
                .limit(CHUNK)
            ).all()
            if not rows:
                break
            accs: dict[tuple[str, str, str, datetime], _Acc] = defaultdict(_Acc)
            for row in rows:
                w = row._mapping
                acc = accs[(w["model"], w["version"], w["group"], _hour(w["window_start"]))]
                acc.windows += 1
                acc.count += w["count"]
                acc.errors += w["errors"]
                _add_latency(acc, w["latency"] or {})
                acc.output_counts = _add_counts(acc.output_counts, w["output_counts"] or [])
            _merge(conn, accs)
            conn.execute(delete(windows).where(windows.c.id.in_([row.id for row in rows])))
            rolled += len(rows)
            hours.update(accs)
    return RetentionResult(rolled_up=rolled, hours=len(hours))


def _merge(conn: Connection, accs: dict[tuple[str, str, str, datetime], _Acc]) -> None:
    _, rollups = _tables()
    now = datetime.now(UTC)
    for (model, version, group, hour), acc in accs.items():
        scope = (
            (rollups.c.model == model)
            & (rollups.c.version == version)
            & (rollups.c.group == group)
            & (rollups.c.hour == hour)
        )
        found = conn.execute(select(rollups).where(scope).with_for_update()).first()
        if found is None:
            conn.execute(
                rollups.insert().values(
                    model=model,
                    version=version,
                    group=group,
                    hour=hour,
                    windows=acc.windows,
                    count=acc.count,
                    errors=acc.errors,
                    latency=acc.latency,
                    latency_mismatched=acc.latency_mismatched,
                    output_counts=acc.output_counts,
                    updated_at=now,
                )
            )
            continue
        current = found._mapping
        merged = _Acc(latency=dict(current["latency"] or {}))
        merged.latency_mismatched = current["latency_mismatched"] + acc.latency_mismatched
        if acc.latency:
            _add_latency(merged, acc.latency)
        conn.execute(
            rollups.update()
            .where(rollups.c.id == current["id"])
            .values(
                windows=current["windows"] + acc.windows,
                count=current["count"] + acc.count,
                errors=current["errors"] + acc.errors,
                latency=merged.latency,
                latency_mismatched=merged.latency_mismatched,
                output_counts=_add_counts(list(current["output_counts"] or []), acc.output_counts),
                updated_at=now,
            )
        )
