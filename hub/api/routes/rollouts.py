"""Phased rollouts: create, show, list, and the operator actions (the controller acts on them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from hub.api.deps import ContextDep, SessionDep
from hub.keys import BundleSignerCheck
from hub.rollouts import service
from hub.rollouts.views import rollout_view, summary

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


class RolloutCreate(BaseModel):
    model: str = Field(description="registered model name")
    version: str = Field(description="version number, 'latest' or an alias")
    selector: str = Field(description="all | id:a,b | group:g | tag expression (site=x and ...)")
    phases: str = Field(default="1,10%,50%,100%", description="cumulative counts or percentages")
    bundle_digest: str | None = Field(default=None, description="default: the version's bundle")
    bundle_size: int | None = None
    gates: dict[str, Any] | None = None
    on_failure: str = Field(default="rollback", description="pause | rollback")
    bake_s: float = 60.0
    min_reporting: int = 1
    device_timeout_s: float = 600.0
    probation_s: int | None = None
    approval_phases: list[int] = Field(default_factory=list)
    join_phase: str = "last"
    max_commands_per_s: float | None = None
    max_concurrent_downloads: int | None = None
    shadow: dict[str, float] | None = Field(
        default=None,
        description="pre-rollout shadow phase: fraction_of_devices, sample_fraction, bake_s, "
        "min_agreement (null: none)",
    )
    promote_alias: str = Field(
        default="production", description="alias moved to the version on completion ('' none)"
    )


class Reason(BaseModel):
    reason: str = "operator"


@router.post("", status_code=201)
def create(body: RolloutCreate, session: SessionDep, context: ContextDep) -> dict[str, Any]:
    """409 when the bundle is not signed with the hub's current key (re-package it)."""
    check = BundleSignerCheck.of_hub(context.store, context.settings.data_dir)
    rollout = service.create_rollout(session, **body.model_dump(), signer_check=check)
    return rollout_view(session, rollout)


@router.get("")
def list_rollouts(session: SessionDep, state: str | None = None) -> list[dict[str, Any]]:
    return [summary(r) for r in service.list_rollouts(session, state=state)]


@router.get("/{rollout_id}")
def show(rollout_id: str, session: SessionDep) -> dict[str, Any]:
    return rollout_view(session, service.get_rollout(session, rollout_id=rollout_id))


_ACTIONS = {
    "pause": service.pause,
    "resume": service.resume,
    "advance": service.advance,
    "cancel": service.cancel,
    "rollback": service.rollback,
    "approve": service.approve,
}


@router.post("/{rollout_id}/retry")
def retry(rollout_id: str, session: SessionDep) -> dict[str, Any]:
    return rollout_view(session, service.retry_failed(session, rollout_id=rollout_id))


@router.post("/{rollout_id}/{action}")
def act(rollout_id: str, action: str, session: SessionDep, body: Reason | None = None) -> Any:
    operation = _ACTIONS.get(action)
    if operation is None:
        from hub.errors import NotFound

        raise NotFound(f"no rollout action {action!r}; one of {sorted([*_ACTIONS, 'retry'])}")
    reason = body.reason if body else "operator"
    return rollout_view(session, operation(session, rollout_id=rollout_id, reason=reason))
