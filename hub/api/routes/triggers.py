"""Continuous training over the API: policies per model and the trigger audit trail."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from hub.api.deps import ContextDep, SessionDep
from hub.keys import bundle_signing_key
from hub.tables.triggers import TrainingPolicy, TriggerEvent
from hub.triggers import (
    PackageAndCanary,
    list_events,
    list_policies,
    run_triggers,
    set_policy,
    trigger_now,
)

router = APIRouter(tags=["triggers"])


class PolicyIn(BaseModel):
    spec: str = Field(description="model spec to train (built-in name or module:Class)")
    dataset: str = Field(description="dataset NAME; runs use its latest version")
    params: dict[str, Any] = Field(default_factory=dict)
    schedule_interval_s: int | None = Field(default=None, gt=0)
    on_new_data: bool = True
    on_new_code: bool = True
    on_drift: bool = True
    on_degradation: bool = True
    field_data: bool = True
    min_field_records: int = Field(default=50, ge=1)
    min_incident_records: int = Field(
        default=1000,
        ge=0,
        description="labelled field samples from the incident's scopes since its first alert, "
        "needed before a drift/degradation run",
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
    debounce_s: int = Field(default=300, ge=0)


class OnDemand(BaseModel):
    reason: str = Field(min_length=1, description="why; kept with the trigger event")


def _policy(p: TrainingPolicy) -> dict[str, Any]:
    return dict(p.model_dump(mode="json"))


def _event(e: TriggerEvent) -> dict[str, Any]:
    return dict(e.model_dump(mode="json"))


@router.get("/triggers/policies")
def get_policies(session: SessionDep) -> dict[str, Any]:
    return {"policies": [_policy(p) for p in list_policies(session)]}


@router.put("/triggers/policies/{model}")
def put_policy(model: str, body: PolicyIn, session: SessionDep) -> dict[str, Any]:
    return _policy(set_policy(session, model_name=model, **body.model_dump()))


@router.get("/triggers/events")
def get_events(session: SessionDep, model: str | None = None) -> dict[str, Any]:
    return {"events": [_event(e) for e in list_events(session, model_name=model)]}


@router.post("/triggers/run")
def run_now(ctx: ContextDep) -> dict[str, Any]:
    """Evaluate every policy now and run what is due (synchronously)."""
    followup = PackageAndCanary(signing_key=bundle_signing_key(ctx.settings))
    events = run_triggers(ctx.engine, ctx.store, followup=followup)
    return {"events": [_event(e) for e in events]}


@router.post("/triggers/policies/{model}/run", status_code=201)
def on_demand(model: str, body: OnDemand, ctx: ContextDep) -> dict[str, Any]:
    followup = PackageAndCanary(signing_key=bundle_signing_key(ctx.settings))
    event = trigger_now(
        ctx.engine, ctx.store, model_name=model, reason=body.reason, followup=followup
    )
    return _event(event)
