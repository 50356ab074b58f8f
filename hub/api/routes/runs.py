"""Training runs: create, log metrics and artifacts, finish, inspect."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field

from hub import tracking
from hub.api.deps import ContextDep, SessionDep, StoreDep
from hub.errors import InvalidInput
from hub.tables import MetricIn, RunCreate, RunPublic

router = APIRouter(prefix="/runs", tags=["runs"])


class RunFinish(BaseModel):
    status: str = Field(default="finished", pattern="^(finished|failed)$")
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None


class MetricPoint(BaseModel):
    key: str
    step: int
    value: float


@router.post("", response_model=RunPublic, status_code=201)
def create(body: RunCreate, session: SessionDep) -> RunPublic:
    run = tracking.create_run(
        session,
        spec=body.spec,
        dataset=body.dataset,
        code_version=body.code_version,
        params=body.params,
        tags=body.tags,
    )
    return tracking.to_public(session, run)


@router.get("", response_model=list[RunPublic])
def list_runs(session: SessionDep, spec: str | None = None) -> list[RunPublic]:
    return [tracking.to_public(session, r) for r in tracking.list_runs(session, spec=spec)]


@router.get("/{run_id}", response_model=RunPublic)
def show(run_id: str, session: SessionDep) -> RunPublic:
    return tracking.to_public(session, tracking.get_run(session, run_id=run_id))


@router.post("/{run_id}/metrics", status_code=204)
def log_metrics(
    run_id: str, points: Annotated[list[MetricIn], Body(max_length=10_000)], session: SessionDep
) -> None:
    for point in points:
        tracking.log_metric(
            session, run_id=run_id, key=point.key, value=point.value, step=point.step
        )


@router.get("/{run_id}/metrics", response_model=list[MetricPoint])
def metrics(run_id: str, session: SessionDep, key: str | None = None) -> list[MetricPoint]:
    rows = tracking.metric_history(session, run_id=run_id, key=key)
    return [MetricPoint(key=r.key, step=r.step, value=r.value) for r in rows]


@router.put(
    "/{run_id}/artifacts/{name}",
    status_code=201,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def put_artifact(
    run_id: str, name: str, request: Request, session: SessionDep, store: StoreDep, ctx: ContextDep
) -> dict[str, Any]:
    data = await request.body()
    if len(data) > ctx.settings.max_upload_bytes:
        raise InvalidInput(f"artifact is larger than {ctx.settings.max_upload_bytes} bytes")
    artifact = tracking.log_artifact(session, store, run_id=run_id, name=name, data=data)
    return {"name": artifact.name, "digest": artifact.digest, "size": artifact.size}


@router.post("/{run_id}/finish", response_model=RunPublic)
def finish(run_id: str, body: RunFinish, session: SessionDep) -> RunPublic:
    run = tracking.finish_run(
        session, run_id=run_id, status=body.status, metrics=body.metrics, error=body.error
    )
    return tracking.to_public(session, run)
