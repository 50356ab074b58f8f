"""Monitoring: drift and degradation status, alerts, and an evaluation on demand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from hub.api.deps import ContextDep, SessionDep
from hub.api.public import EvaluationPublic, MonitorStatusPublic
from hub.tables.monitoring import AlertKind, AlertPublic

router = APIRouter(prefix="/monitor", tags=["monitor"])


@router.get("/status", response_model=MonitorStatusPublic)
def status(session: SessionDep, model: str | None = None) -> MonitorStatusPublic:
    """Per model version: windows, predictions, live vs evaluated accuracy, latest scores
    (version scope) with their thresholds, open alerts."""
    from hub.monitoring.status import monitor_status

    return MonitorStatusPublic.model_validate(monitor_status(session, model=model))


@router.get("/alerts", response_model=list[AlertPublic])
def alerts(
    session: SessionDep,
    kind: AlertKind | None = None,
    model: str | None = None,
    version: str | None = None,
    scope: str | None = None,
    open_only: bool = False,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 500,
) -> list[AlertPublic]:
    """Alerts, oldest first (the latest ``limit``); ``open_only`` leaves out resolved ones."""
    from hub.monitoring import list_alerts

    found = list_alerts(
        session,
        kind=kind.value if kind else None,
        model=model,
        version=version,
        scope=scope,
        open_only=open_only,
        limit=limit,
    )
    return [AlertPublic.model_validate(a) for a in found]


@router.post("/evaluate", response_model=EvaluationPublic)
def evaluate_now(ctx: ContextDep) -> EvaluationPublic:
    """Evaluate the telemetry and labels that arrived since the last evaluation, now."""
    from hub.monitoring import MonitorConfig, evaluate

    report = evaluate(ctx.engine, config=MonitorConfig.from_settings(ctx.settings), store=ctx.store)
    return EvaluationPublic.model_validate(report.to_json())
