"""Monitoring page data: drift and accuracy scores over time per model version, and alerts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlmodel import Session, col, select

from hub.tables import Alert, MonitorScore
from hub.ui._charts import Series, line_chart

MAX_POINTS = 300  # newest scores per version shown
MAX_SCOPES = 4  # series per chart besides the threshold


def monitored_versions(session: Session) -> list[tuple[str, str]]:
    pairs = set(session.exec(select(MonitorScore.model, MonitorScore.version).distinct()).all())
    pairs |= set(session.exec(select(Alert.model, Alert.version).distinct()).all())
    return sorted((m, v) for m, v in pairs if m)


def _scope_rank(scope: str) -> tuple[int, str]:
    return ({"version": 0, "group": 1}.get(scope.partition(":")[0], 2), scope)


def _charts(rows: list[MonitorScore]) -> list[dict[str, Any]]:
    by_chart: dict[tuple[str, str], list[MonitorScore]] = defaultdict(list)
    for r in rows:
        by_chart[(r.kind, r.detector or r.kind)].append(r)
    charts = []
    for (kind, detector), chart_rows in sorted(by_chart.items()):
        by_scope: dict[str, list[MonitorScore]] = defaultdict(list)
        for r in chart_rows:
            by_scope[r.scope].append(r)
        scopes = sorted(by_scope, key=_scope_rank)[:MAX_SCOPES]
        series = [
            Series(
                name=scope,
                points=[(r.at, r.score) for r in by_scope[scope]],
                fired=[r.fired for r in by_scope[scope]],
            )
            for scope in scopes
        ]
        lead = by_scope[scopes[0]]
        series.append(
            Series(name="threshold", points=[(r.at, r.threshold) for r in lead], threshold=True)
        )
        latest = lead[-1]
        charts.append(
            {
                "kind": kind,
                "detector": detector,
                "svg": line_chart(title=f"{kind}: {detector}", series=series),
                "latest": {"score": latest.score, "threshold": latest.threshold, "at": latest.at},
                "fired": sum(1 for r in chart_rows if r.fired),
                "points": len(chart_rows),
            }
        )
    return charts


def _accuracy(session: Session, *, model: str, version: str) -> dict[str, Any]:
    from hub.monitoring.accuracy import live_accuracy  # numpy and detectors: only when needed

    return live_accuracy(session, model=model, version=version).to_json()


def version_panel(session: Session, *, model: str, version: str) -> dict[str, Any]:
    rows = list(
        session.exec(
            select(MonitorScore)
            .where(MonitorScore.model == model, MonitorScore.version == version)
            .order_by(col(MonitorScore.id).desc())
            .limit(MAX_POINTS)
        ).all()
    )
    rows.reverse()
    return {
        "model": model,
        "version": version,
        "charts": _charts(rows),
        "accuracy": _accuracy(session, model=model, version=version),
    }


def alerts(session: Session, *, model: str = "", limit: int = 50) -> list[Alert]:
    query = select(Alert)
    if model:
        query = query.where(Alert.model == model)
    found = session.exec(query.order_by(col(Alert.id).desc()).limit(limit)).all()
    return sorted(found, key=lambda a: (a.resolved_at is not None, -(a.id or 0)))


def monitoring_view(session: Session, *, model: str = "", version: str = "") -> dict[str, Any]:
    """What ``edgeloop monitor status`` shows (the same ``monitor_status``: per version the
    windows, predictions and devices the monitor has read, live and evaluated accuracy,
    latest scores, open alerts; the monitor's lag), then the charts of the versions with
    scores and the alerts."""
    from hub.monitoring.status import monitor_status

    status = monitor_status(session, model=model or None)
    rows = [v for v in status["versions"] if not version or v["version"] == version]
    seen = {(v["model"], v["version"]) for v in status["versions"]}
    versions = sorted(set(monitored_versions(session)) | seen)
    chosen = [
        (m, v) for m, v in versions if (not model or m == model) and (not version or v == version)
    ]
    return {
        "lag": status["monitor"],
        "status": rows,
        "versions": versions,
        "model": model,
        "version": version,
        "panels": [version_panel(session, model=m, version=v) for m, v in chosen[-6:]],
        "alerts": alerts(session, model=model),
    }
