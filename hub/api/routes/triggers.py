"""Continuous training over the API: policies per model and the trigger audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, StrictBool

from hub.api.deps import NAME_PATTERN, ContextDep, NamePath, SessionDep
from hub.api.public import (
    PolicyListPublic,
    TrainingPolicyPublic,
    TriggerEventListPublic,
    TriggerEventPublic,
)
from hub.security.keys import bundle_signing_key
from hub.tables import JsonInt
from hub.tables.triggers import TrainingPolicy, TriggerEvent
from hub.triggers import (
    PackageAndCanary,
    list_events,
    list_policies,
    run_triggers,
    set_policy,
    trigger_now,
)

router = APIRouter(prefix="/triggers", tags=["triggers"])

_YEAR_S = 366 * 24 * 3600


class PolicyIn(BaseModel):
    spec: str = Field(description="model spec to train (built-in name or module:Class)")
    dataset: str = Field(
        description="dataset NAME; runs use its latest version", pattern=NAME_PATTERN
    )
    params: dict[str, Any] = Field(default_factory=dict)
    schedule_interval_s: JsonInt | None = Field(default=None, gt=0, le=_YEAR_S)
    on_new_data: StrictBool = True
    on_new_code: StrictBool = True
    on_drift: StrictBool = True
    on_degradation: StrictBool = True
    field_data: StrictBool = True
    min_field_records: JsonInt = Field(default=50, ge=1, le=2**31 - 1)
    min_incident_records: JsonInt = Field(
        default=1000,
        ge=0,
        le=2**31 - 1,
        description="labelled field samples from the incident's scopes since its first alert, "
        "needed before a drift/degradation run",
    )
    fine_tune_epochs: JsonInt = Field(
        default=10,
        ge=0,
        le=100_000,
        description="drift/degradation runs start from the drifted version's weights and "
        "train this many epochs; 0 trains afresh",
    )
    field_device_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="no device keeps more than max(2/N, this) of a field-data version",
    )
    canary: dict[str, Any] = Field(
        default_factory=dict,
        description="rollout settings for an automatic canary of each retrained version "
        "(selector, phases, bake_s, min_reporting, on_failure, formats, gates); {} = none",
    )
    debounce_s: JsonInt = Field(default=300, ge=0, le=_YEAR_S)


class OnDemand(BaseModel):
    reason: str = Field(
        min_length=1, max_length=2000, description="why; kept with the trigger event"
    )


def _policy(p: TrainingPolicy) -> TrainingPolicyPublic:
    return TrainingPolicyPublic.model_validate(p, from_attributes=True)


def _event(e: TriggerEvent) -> TriggerEventPublic:
    return TriggerEventPublic.model_validate(e, from_attributes=True)


@router.get("/policies", response_model=PolicyListPublic)
def get_policies(session: SessionDep) -> PolicyListPublic:
    return PolicyListPublic(policies=[_policy(p) for p in list_policies(session)])


@router.put("/policies/{model}", response_model=TrainingPolicyPublic)
def put_policy(model: NamePath, body: PolicyIn, session: SessionDep) -> TrainingPolicyPublic:
    return _policy(set_policy(session, model_name=model, **body.model_dump()))


@router.get("/events", response_model=TriggerEventListPublic)
def get_events(
    session: SessionDep, model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None
) -> TriggerEventListPublic:
    return TriggerEventListPublic(
        events=[_event(e) for e in list_events(session, model_name=model)]
    )


@router.post("/run", response_model=TriggerEventListPublic)
def run_now(ctx: ContextDep) -> TriggerEventListPublic:
    """Evaluate every policy now and run what is due (synchronously)."""
    followup = PackageAndCanary(signing_key=bundle_signing_key(ctx.settings))
    events = run_triggers(ctx.engine, ctx.store, followup=followup)
    return TriggerEventListPublic(events=[_event(e) for e in events])


@router.post("/policies/{model}/run", status_code=201, response_model=TriggerEventPublic)
def on_demand(model: NamePath, body: OnDemand, ctx: ContextDep) -> TriggerEventPublic:
    followup = PackageAndCanary(signing_key=bundle_signing_key(ctx.settings))
    event = trigger_now(
        ctx.engine, ctx.store, model_name=model, reason=body.reason, followup=followup
    )
    return _event(event)
