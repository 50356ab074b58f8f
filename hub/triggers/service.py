"""Starting the runs that triggers call for, one per model at a time.

``run_triggers`` evaluates every enabled policy (:mod:`hub.triggers.decide`) and starts at
most one run per model; every decision is a ``trigger_event`` row with its reason. One run
per model at a time: an in-process lock per model, and in the database a ``started`` event
younger than ``STALE_AFTER`` (a crashed run's row stops counting then). A drift or
degradation run first merges the labelled field samples into a new dataset version
(:mod:`hub.triggers.field_data`), and a registered version can be handed to a follow-up
(package it and start a canary rollout: :mod:`hub.triggers.followup`).

Database work happens in short transactions around the training, never across it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.core.artifacts import ArtifactStore
from hub.core.clock import aware, utcnow
from hub.core.db import session_scope
from hub.core.errors import Conflict, NotFound
from hub.datasets import service as datasets
from hub.tables import Alert, ModelVersion
from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus
from hub.triggers.decide import TRAINABLE, Decision, evaluate, not_trainable, running
from hub.triggers.field_data import import_field_data
from hub.triggers.followup import Followup, FollowupResult
from hub.triggers.incidents import Incident, consume
from hub.triggers.policies import get_policy

if TYPE_CHECKING:  # torch: imported when a run starts, not with the hub
    from hub.training.service import TrainOutcome


INCIDENT_KINDS = frozenset({TriggerKind.DRIFT.value, TriggerKind.DEGRADATION.value})


class Runner(Protocol):
    def __call__(
        self,
        engine: Engine,
        store: ArtifactStore,
        *,
        spec_name: str,
        dataset: str,
        params: Mapping[str, Any] | None = ...,
        model_name: str | None = ...,
        init_from: str | None = ...,
    ) -> TrainOutcome: ...


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _model_lock(model_name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model_name, threading.Lock())


def run_triggers(
    engine: Engine,
    store: ArtifactStore,
    *,
    now: datetime | None = None,
    runner: Runner | None = None,
    followup: Followup | None = None,
) -> list[TriggerEvent]:
    """Evaluate every policy and start the runs that are due; returns the new events."""
    now = aware(now or utcnow())
    with session_scope(engine) as s:
        names = [p.model_name for p in s.exec(select(TrainingPolicy)).all() if p.enabled]
    events = []
    for name in names:
        event = _run_one(engine, store, model_name=name, now=now, runner=runner, followup=followup)
        if event is not None:
            events.append(event)
    return events


def trigger_now(
    engine: Engine,
    store: ArtifactStore,
    *,
    model_name: str,
    reason: str,
    now: datetime | None = None,
    runner: Runner | None = None,
    followup: Followup | None = None,
) -> TriggerEvent:
    """Train ``model_name`` now, ignoring debounce; refused while one of its runs is going."""
    if not reason.strip():
        from hub.core.errors import InvalidInput

        raise InvalidInput("an on-demand run needs a reason; it is kept with the event")
    event = _run_one(
        engine,
        store,
        model_name=model_name,
        now=aware(now or utcnow()),
        runner=runner,
        followup=followup,
        on_demand=reason.strip(),
    )
    assert event is not None  # on demand either runs, records a skip, or raises
    return event


def _code_version(spec: str) -> str:
    from hub.specs import get_spec

    return get_spec(spec).code_version()


def _run_one(
    engine: Engine,
    store: ArtifactStore,
    *,
    model_name: str,
    now: datetime,
    runner: Runner | None,
    followup: Followup | None,
    on_demand: str | None = None,
) -> TriggerEvent | None:
    lock = _model_lock(model_name)
    if not lock.acquire(blocking=False):
        if on_demand is not None:
            raise Conflict(f"model {model_name} is already training; try again when it is done")
        return None
    try:
        event = _start(engine, store, model_name=model_name, now=now, on_demand=on_demand)
        if event is None or event.status == TriggerStatus.SKIPPED:
            return event
        if runner is None:
            from hub.training.service import train

            runner = train
        return _train(engine, store, event=event, now=now, runner=runner, followup=followup)
    finally:
        lock.release()


def _start(
    engine: Engine,
    store: ArtifactStore,
    *,
    model_name: str,
    now: datetime,
    on_demand: str | None,
) -> TriggerEvent | None:
    """Decide, then record the ``started`` (or ``skipped``) event in one transaction."""
    with session_scope(engine) as s:
        policy = s.exec(
            select(TrainingPolicy).where(TrainingPolicy.model_name == model_name).with_for_update()
        ).first()
        if policy is None:
            raise NotFound(f"no training policy for model {model_name!r}; set one first")
        busy = running(s, model_name=model_name, now=now)
        if busy is not None:
            if on_demand is not None:
                raise Conflict(
                    f"model {model_name} is already training (event {busy.id} started "
                    f"{aware(busy.at).isoformat()}); try again when it is done"
                )
            return None
        if on_demand is not None:
            version = datasets.get_version(s, ref=f"{policy.dataset}@latest")
            datasets.require_trainable(version)
            decision: Decision | None = Decision(
                kind=TriggerKind.ON_DEMAND,
                reason=on_demand,
                version=version,
                code_version=_code_version(policy.spec),
            )
        else:
            decision = evaluate(s, policy, now=now)
        if decision is None:
            return None
        version, reason, skip = decision.version, decision.reason, decision.skip
        detail = ""
        if decision.incident is not None and policy.field_data:
            found = import_field_data(
                s,
                store,
                dataset=policy.dataset,
                model=model_name,
                min_records=policy.min_field_records,
                shift_expected=decision.incident.reason(),
                # the regime the incident is about: what the field sent since it was raised
                since=decision.incident.started_at,
                device_share=policy.field_device_share,
            )
            if found is None:
                return None
            version = found.version
            detail = f"field data: {found.records} labelled samples -> {version.ref}" + (
                " (new)" if found.created else " (no new samples)"
            )
            if found.overridden:
                detail += "; distribution checks overridden (shift expected)"
            if found.quarantined:
                detail += f"; labels quarantined: {', '.join(found.quarantined)}"
            if found.capped:
                detail += f"; {found.capped} records over a device's share left out"
            if version.validation_status not in TRAINABLE:
                reason, skip = not_trainable(reason, version), True
        event = TriggerEvent(
            model_name=model_name,
            kind=decision.kind,
            reason=reason,
            at=now,
            status=TriggerStatus.SKIPPED if skip else TriggerStatus.STARTED,
            detail="; ".join(p for p in (f"dataset {version.ref}", detail) if p),
            dataset_version_id=version.id,
            code_version=decision.code_version,
        )
        s.add(event)
        s.flush()
        if decision.incident is not None:
            event.alert_ids = consume(
                s, policy=policy, incident=decision.incident, event_id=int(event.id or 0)
            )
            s.add(event)
            s.flush()
        return event


def _incident_of(session: Session, event: TriggerEvent) -> Incident | None:
    """The incident a drift or degradation event answers (its consumed alerts), else None."""
    if event.kind not in INCIDENT_KINDS or not event.alert_ids:
        return None
    alerts = list(session.exec(select(Alert).where(col(Alert.id).in_(event.alert_ids))).all())
    return Incident(kind=TriggerKind(event.kind), alerts=alerts) if alerts else None


def _fine_tune_from(
    session: Session, *, event: TriggerEvent, incident: Incident | None, policy: TrainingPolicy
) -> str | None:
    """The version an incident run starts from: the newest registered version its alerts are
    about, when the policy fine-tunes (``fine_tune_epochs`` > 0); None trains afresh."""
    if policy.fine_tune_epochs <= 0 or incident is None:
        return None
    for number in sorted((int(v) for v in incident.versions if v.isdigit()), reverse=True):
        found = session.exec(
            select(ModelVersion).where(
                ModelVersion.model_name == event.model_name, ModelVersion.version == number
            )
        ).first()
        if found is not None:
            return f"{event.model_name}@{number}"
    return None


def _incident_baseline(incident: Incident | None, canary: dict[str, Any]) -> dict[str, Any]:
    """An incident's canary compares the candidate with the previous version *since the
    incident began* (gate ``baseline_since``): before it, the drifted devices saw other
    inputs, and the previous version's accuracy on those is not a bar the candidate can be
    held to on today's (a noise drift's canary was rolled back on 95.9% against a baseline of
    mostly pre-drift labels). A canary that sets its own ``baseline_since`` keeps it."""
    if not canary or incident is None:
        return canary
    gates = dict(canary.get("gates") or {})
    if gates.get("baseline_since") is not None:
        return canary
    gates["baseline_since"] = incident.started_at.isoformat()
    return {**canary, "gates": gates}


def _train(
    engine: Engine,
    store: ArtifactStore,
    *,
    event: TriggerEvent,
    now: datetime,
    runner: Runner,
    followup: Followup | None,
) -> TriggerEvent:
    with session_scope(engine) as s:
        policy = get_policy(s, model_name=event.model_name)
        version = datasets.get_by_id(s, version_id=event.dataset_version_id or 0)
        spec, params, canary = policy.spec, dict(policy.params), dict(policy.canary)
        incident = _incident_of(s, event)  # its alerts, read once
        start = _fine_tune_from(s, event=event, incident=incident, policy=policy)
        canary = _incident_baseline(incident, canary)
    status, run_id, detail = TriggerStatus.FINISHED, None, event.detail
    registered: str | None = None
    after: FollowupResult | None = None
    extra: dict[str, Any] = {}
    if start is not None:
        params["epochs"] = policy.fine_tune_epochs
        extra["init_from"] = start
        detail += f"; fine-tuned from {start} ({policy.fine_tune_epochs} epochs)"
    try:
        outcome = runner(
            engine,
            store,
            spec_name=spec,
            dataset=version.ref,
            params=params,
            model_name=event.model_name,
            **extra,
        )
        run_id = outcome.run.id
        mv = outcome.model_version
        if mv is not None:
            registered = str(mv.version)
            detail += f"; registered {mv.model_name}@{mv.version}"
            if canary and followup is not None:
                after = followup(
                    engine, store, model=mv.model_name, version=mv.version, canary=canary
                )
                detail += f"; {after.summary}"
            elif canary:
                detail += "; canary configured but this hub runs no follow-up (no rollouts)"
        else:
            detail += "; no version registered (evaluation bar not met)"
    except Exception as exc:  # recorded on the event; other models go on
        status, detail = TriggerStatus.FAILED, f"{detail}; {exc!r}"[:2000]
    with session_scope(engine) as s:
        stored = s.get(TriggerEvent, event.id)
        assert stored is not None
        stored.status, stored.run_id, stored.detail = status, run_id, detail
        stored.model_version = registered
        if after is not None:
            stored.bundle_digest, stored.rollout_id = after.bundle_digest, after.rollout_id
        policy = get_policy(s, model_name=event.model_name)
        # a failed run also counts: one incident triggers one run, not a retry loop
        policy.last_run_at = now
        policy.last_dataset_version_id = event.dataset_version_id
        policy.last_code_version = event.code_version
        s.add_all([stored, policy])
        s.flush()
        return stored
