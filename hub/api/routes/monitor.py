"""Monitoring: drift and degradation status, alerts, and an evaluation on demand."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hub.api.deps import ContextDep, SessionDep
from hub.errors import InvalidInput
from hub.tables.monitoring import AlertKind, AlertPublic

router = APIRouter(prefix="/monitor", tags=["monitor"])


@router.get("/status")
def status(session: SessionDep, model: str | None = None) -> dict[str, Any]:
    """Per model version: windows, predictions, live vs evaluated accuracy, latest scores
    (version scope) with their thresholds, open alerts."""
    from hub.monitoring.status import monitor_status

    return monitor_status(session, model=model)


@router.get("/alerts", response_model=list[AlertPublic])
def alerts(
    session: SessionDep,
    kind: str | None = None,
    model: str | None = None,
    version: str | None = None,
    scope: str | None = None,
    open_only: bool = False,
    limit: int = 500,
) -> list[AlertPublic]:
    """Alerts, oldest first (the latest ``limit``); ``open_only`` leaves out resolved ones."""
    from hub.monitoring import list_alerts

    if kind is not None and kind not in {k.value for k in AlertKind}:
        raise InvalidInput(f"kind {kind!r} is not one of {sorted(k.value for k in AlertKind)}")
    if limit <= 0:
        raise InvalidInput("limit must be positive")
    found = list_alerts(
        session,
        kind=kind,
        model=model,
        version=version,
        scope=scope,
        open_only=open_only,
        limit=limit,
    )
    return [AlertPublic.model_validate(a) for a in found]


@router.post("/evaluate")
def evaluate_now(ctx: ContextDep) -> dict[str, Any]:
    """Evaluate the telemetry and labels that arrived since the last evaluation, now."""
    from hub.monitoring import MonitorConfig, evaluate

    report = evaluate(ctx.engine, config=MonitorConfig.from_settings(ctx.settings), store=ctx.store)
    return report.to_json()
