"""Training runs: create, log metrics and artifacts, finish, inspect."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field, StrictFloat

from hub.api.deps import ContextDep, HexIdPath, NamePath, SessionDep, StoreDep
from hub.api.public import ArtifactPublic
from hub.core.errors import InvalidInput
from hub.registry import tracking
from hub.tables import MetricIn, RunCreate, RunPublic

router = APIRouter(prefix="/runs", tags=["runs"])


class RunFinish(BaseModel):
    status: str = Field(default="finished", pattern="^(finished|failed)$")
    metrics: dict[str, StrictFloat] = Field(default_factory=dict)
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
def show(run_id: HexIdPath, session: SessionDep) -> RunPublic:
    return tracking.to_public(session, tracking.get_run(session, run_id=run_id))


@router.post("/{run_id}/metrics", status_code=204, response_model=None)
def log_metrics(
    run_id: HexIdPath,
    points: Annotated[list[MetricIn], Body(max_length=10_000)],
    session: SessionDep,
) -> None:
    tracking.log_metrics(session, run_id=run_id, points=((p.key, p.value, p.step) for p in points))


@router.get("/{run_id}/metrics", response_model=list[MetricPoint])
def metrics(run_id: HexIdPath, session: SessionDep, key: str | None = None) -> list[MetricPoint]:
    rows = tracking.metric_history(session, run_id=run_id, key=key)
    return [MetricPoint(key=r.key, step=r.step, value=r.value) for r in rows]


@router.put(
    "/{run_id}/artifacts/{name}",
    status_code=201,
    response_model=ArtifactPublic,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary", "minLength": 1}
                }
            },
            "required": True,
        }
    },
)
async def put_artifact(
    run_id: HexIdPath,
    name: NamePath,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    ctx: ContextDep,
) -> ArtifactPublic:
    data = await request.body()
    if not data:
        raise InvalidInput("the artifact's bytes are the request body; it was empty")
    if len(data) > ctx.settings.max_upload_bytes:
        raise InvalidInput(f"artifact is larger than {ctx.settings.max_upload_bytes} bytes")
    artifact = tracking.log_artifact(session, store, run_id=run_id, name=name, data=data)
    return ArtifactPublic(name=artifact.name, digest=artifact.digest, size=artifact.size)


@router.post("/{run_id}/finish", response_model=RunPublic)
def finish(run_id: HexIdPath, body: RunFinish, session: SessionDep) -> RunPublic:
    run = tracking.finish_run(
        session, run_id=run_id, status=body.status, metrics=body.metrics, error=body.error
    )
    return tracking.to_public(session, run)
