"""Phased rollouts: create, show, list, and the operator actions (the controller acts on them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field, StrictFloat
from sqlmodel import Session

from hub.api.deps import (
    MAX_ID,
    MAX_SIZE,
    NAME_PATTERN,
    SELECTOR_PATTERN,
    ContextDep,
    RolloutIdPath,
    SessionDep,
)
from hub.api.public import RolloutPublic, RolloutSummaryPublic
from hub.rollouts import service
from hub.rollouts.views import rollout_view, summary
from hub.tables import JsonInt, Rollout

router = APIRouter(prefix="/rollouts", tags=["rollouts"])

_YEAR_S = 366 * 24 * 3600


class RolloutCreate(BaseModel):
    model: str = Field(description="registered model name", pattern=NAME_PATTERN)
    version: str = Field(
        description="version number, 'latest' or an alias", pattern=SELECTOR_PATTERN
    )
    selector: str = Field(description="all | id:a,b | group:g | tag expression (site=x and ...)")
    phases: str = Field(default="1,10%,50%,100%", description="cumulative counts or percentages")
    bundle_digest: str | None = Field(default=None, description="default: the version's bundle")
    bundle_size: JsonInt | None = Field(default=None, ge=0, le=MAX_SIZE)
    gates: dict[str, Any] | None = None
    on_failure: Literal["pause", "rollback"] = "rollback"
    bake_s: StrictFloat = Field(default=60.0, ge=0, le=_YEAR_S)
    min_reporting: JsonInt = Field(default=1, ge=0, le=MAX_ID)
    device_timeout_s: StrictFloat = Field(default=600.0, gt=0, le=_YEAR_S)
    probation_s: JsonInt | None = Field(default=None, ge=0, le=_YEAR_S)
    approval_phases: list[Annotated[JsonInt, Field(ge=0, le=1000)]] = Field(default_factory=list)
    join_phase: Literal["last", "current"] = "last"
    max_commands_per_s: StrictFloat | None = Field(default=None, gt=0, le=1e6)
    max_concurrent_downloads: JsonInt | None = Field(default=None, ge=1, le=1_000_000)
    shadow: dict[str, StrictFloat] | None = Field(
        default=None,
        description="pre-rollout shadow phase: fraction_of_devices, sample_fraction, bake_s, "
        "min_agreement (null: none)",
    )
    promote_alias: str = Field(
        default="production",
        description="alias moved to the version on completion ('' none)",
        pattern=r"^([a-z][a-z0-9_-]{0,63})?$",
    )


class Reason(BaseModel):
    reason: str = Field(default="operator", max_length=2000)


@router.post("", status_code=201, response_model=RolloutPublic)
def create(body: RolloutCreate, session: SessionDep, context: ContextDep) -> RolloutPublic:
    """409 when the bundle is not signed with the hub's current key (re-package it)."""
    from hub.security.keys import BundleSignerCheck  # cryptography, on use

    check = BundleSignerCheck.of_hub(context.store, context.settings.data_dir)
    rollout = service.create_rollout(session, **body.model_dump(), signer_check=check)
    return _view(session, rollout)


@router.get("", response_model=list[RolloutSummaryPublic])
def list_rollouts(session: SessionDep, state: str | None = None) -> list[RolloutSummaryPublic]:
    found = service.list_rollouts(session, state=state)
    return [RolloutSummaryPublic.model_validate(summary(r)) for r in found]


@router.get("/{rollout_id}", response_model=RolloutPublic)
def show(rollout_id: RolloutIdPath, session: SessionDep) -> RolloutPublic:
    return _view(session, service.get_rollout(session, rollout_id=rollout_id))


def _view(session: Session, rollout: Rollout) -> RolloutPublic:
    return RolloutPublic.model_validate(rollout_view(session, rollout))


_ACTIONS = {
    "pause": service.pause,
    "resume": service.resume,
    "advance": service.advance,
    "cancel": service.cancel,
    "rollback": service.rollback,
    "approve": service.approve,
}


class PromoteRequest(BaseModel):
    unverified: bool = Field(
        default=False,
        description="move the alias even when the gates lack the evidence (recorded as an "
        "unverified promotion, the reason as the override)",
    )
    reason: str = Field(default="operator", max_length=2000)


@router.post("/{rollout_id}/promote", response_model=RolloutPublic)
def promote(
    rollout_id: RolloutIdPath, session: SessionDep, body: PromoteRequest | None = None
) -> RolloutPublic:
    """Move a completed rollout's ``promote_alias`` whose promotion was withheld: its gates
    are evaluated again now; 409 when they still lack the evidence (``unverified`` promotes
    anyway, recorded as such) or the rollout is not completed."""
    body = body or PromoteRequest()
    rollout = service.promote_now(
        session, rollout_id=rollout_id, unverified=body.unverified, reason=body.reason
    )
    return _view(session, rollout)


@router.post("/{rollout_id}/retry", response_model=RolloutPublic)
def retry(rollout_id: RolloutIdPath, session: SessionDep) -> RolloutPublic:
    return _view(session, service.retry_failed(session, rollout_id=rollout_id))


Action = Literal["pause", "resume", "advance", "cancel", "rollback", "approve"]


@router.post("/{rollout_id}/{action}", response_model=RolloutPublic)
def act(
    rollout_id: RolloutIdPath,
    action: Annotated[Action, Path(description="the operator action")],
    session: SessionDep,
    body: Reason | None = None,
) -> RolloutPublic:
    operation = _ACTIONS[action]
    reason = body.reason if body else "operator"
    return _view(session, operation(session, rollout_id=rollout_id, reason=reason))
