"""The monitoring picture per model version, for ``GET /api/v1/monitor/status``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from hub.core.clock import aware
from hub.monitoring._alerts import open_alerts
from hub.monitoring._cache import cache_for
from hub.monitoring._cursors import HEAD
from hub.monitoring._reference import load_reference
from hub.monitoring._report import alert_json
from hub.monitoring.accuracy import live_accuracy
from hub.tables.fleet import TelemetryWindowRow
from hub.tables.monitoring import MonitorCursor, MonitorDevice, MonitorScore


def monitor_status(session: Session, *, model: str | None = None) -> dict[str, Any]:
    """Per version: telemetry windows, predictions, devices, live vs evaluated accuracy, the
    latest score of each detector at version scope, and the open alerts. The counts are what
    the monitor has read (kept on its cursors as it reads: no scan of the telemetry; rows
    not read yet are the lag's ``pending_rows``)."""
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    cursors = session.exec(select(MonitorCursor).where(MonitorCursor.scope == HEAD)).all()
    read = max((c.last_id for c in cursors if c.stream == "telemetry"), default=0)
    tw = TelemetryWindowRow
    unread = sa_select(col(tw.model), col(tw.version)).where(col(tw.id) > read).distinct()
    for m, v in session.execute(unread).all():  # versions the monitor has not read yet
        versions[(m, v)] = {"windows": 0, "predictions": 0, "devices": 0}
    for c in cursors:
        counts = versions.setdefault(
            (c.model, c.version), {"windows": 0, "predictions": 0, "devices": 0}
        )
        if c.stream == "telemetry":
            counts["windows"] = int((c.pending or {}).get("windows", 0))
            counts["predictions"] = int((c.pending or {}).get("predictions", 0))
    md = MonitorDevice
    per_version = sa_select(col(md.model), col(md.version), func.count()).group_by(
        col(md.model), col(md.version)
    )
    for m, v, devices in session.execute(per_version).all():
        if (m, v) in versions:
            versions[(m, v)]["devices"] = int(devices)
    out = []
    for (m, v), counts in sorted(versions.items()):
        if model is not None and m != model:
            continue
        ref = load_reference(session, model=m, version=v)
        out.append(
            {
                "model": m,
                "version": v,
                **counts,
                "live_accuracy": live_accuracy(session, model=m, version=v).to_json(),
                "evaluated_accuracy": ref.accuracy if ref else None,
                "scores": _latest_scores(session, model=m, version=v),
                "open_alerts": [alert_json(a) for a in open_alerts(session, model=m, version=v)],
            }
        )
    return {
        "versions": out,
        "open_alerts": sum(len(v["open_alerts"]) for v in out),
        "monitor": monitor_lag(session, versions=sorted(versions)),
    }


def monitor_lag(
    session: Session, *, versions: list[tuple[str, str]], now: datetime | None = None
) -> dict[str, Any]:
    """How far monitoring is behind ingest (per version: the age of the oldest telemetry row
    past its cursor, one index seek; rows pending), and this process's latest evaluation."""
    now = now or datetime.now(UTC)
    heads = {
        (c.model, c.version): c.last_id
        for c in session.exec(
            select(MonitorCursor).where(
                MonitorCursor.stream == "telemetry", MonitorCursor.scope == HEAD
            )
        ).all()
    }
    lag, pending = 0.0, 0
    tw = TelemetryWindowRow
    for model, version in versions:
        past = (
            tw.model == model,
            tw.version == version,
            col(tw.id) > heads.get((model, version), 0),
        )
        oldest = session.exec(
            select(tw.received_at).where(*past).order_by(col(tw.id)).limit(1)
        ).first()
        if oldest is None:
            continue
        lag = max(lag, (now - aware(oldest)).total_seconds())
        pending += int(session.exec(select(func.count()).select_from(tw).where(*past)).one())
    cache = cache_for(str(session.get_bind().engine.url))
    cycle = cache.last_cycle
    return {
        "lag_s": round(max(lag, 0.0), 3),
        "pending_rows": pending,
        "last_cycle_s": None if cycle is None else cycle["seconds"],
        "last_cycle_at": None if cycle is None else cycle["at"],
        "cached": cache.sizes(),
    }


def _latest_scores(session: Session, *, model: str, version: str) -> list[dict[str, Any]]:
    scope = f"version:{model}@{version}"
    rows = session.exec(
        select(MonitorScore)
        .where(
            MonitorScore.model == model,
            MonitorScore.version == version,
            MonitorScore.scope == scope,
        )
        .order_by(col(MonitorScore.id).desc())
        .limit(200)
    ).all()
    latest: dict[tuple[str, str], MonitorScore] = {}
    for row in rows:
        latest.setdefault((row.kind, row.detector), row)
    return [
        {
            "kind": r.kind,
            "scope": r.scope,
            "detector": r.detector,
            "score": r.score,
            "threshold": r.threshold,
            "p_value": r.p_value,
            "fired": r.fired,
            "n": r.n,
            "at": r.at.isoformat(),
        }
        for (_, _), r in sorted(latest.items())
    ]
