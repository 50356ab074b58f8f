"""Which trigger is due for a policy now, and why (read-only: nothing is started here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from hub.core.clock import aware
from hub.core.errors import NotFound
from hub.datasets import service as datasets
from hub.tables import DatasetVersion
from hub.tables.devices import Device
from hub.tables.fleet import FeedbackLabelRow, FieldSample
from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus
from hub.triggers.incidents import Incident, pending_incident
from hub.triggers.policies import list_policies

STALE_AFTER = timedelta(hours=6)
TRAINABLE = frozenset({"passed", "overridden"})


@dataclass(frozen=True, kw_only=True)
class Decision:
    kind: TriggerKind
    reason: str
    version: DatasetVersion
    code_version: str
    skip: bool = False
    incident: Incident | None = None


def _labelled_count(model: str) -> Any:
    """``count(*)`` of ``model``'s field samples for which a label came back."""
    return (
        select(func.count())
        .select_from(FieldSample)
        .join(
            FeedbackLabelRow,
            (col(FeedbackLabelRow.prediction_id) == col(FieldSample.prediction_id))
            & (col(FeedbackLabelRow.device_id) == col(FieldSample.device_id)),
        )
        .where(FieldSample.model == model, col(FeedbackLabelRow.label).is_not(None))
    )


def labelled_field_count(session: Session, *, model: str) -> int:
    """Field samples of ``model`` for which a label came back."""
    return int(session.exec(_labelled_count(model)).one())


def incident_devices(session: Session, *, incident: Incident) -> set[str] | None:
    """The devices the incident's device and group alerts are about (the narrowest scopes that
    fired); None for every device, when only version scopes fired."""
    devices: set[str] = set()
    groups: set[str] = set()
    for alert in incident.alerts:
        kind, _, name = alert.scope.partition(":")
        if kind == "device":
            devices.add(name)
        elif kind == "group":
            groups.add(name)
    if not devices and not groups:
        return None
    if groups:
        devices |= set(
            session.exec(select(Device.id).where(col(Device.group).in_(sorted(groups)))).all()
        )
    return devices


def incident_field_count(session: Session, *, model: str, incident: Incident) -> int:
    """Labelled field samples of ``model`` from the incident's devices, taken after its first
    alert opened: how much of the new regime a retrain would learn from."""
    query = _labelled_count(model).where(col(FieldSample.at) >= incident.started_at)
    devices = incident_devices(session, incident=incident)
    if devices is not None:
        query = query.where(col(FieldSample.device_id).in_(sorted(devices)))
    return int(session.exec(query).one())


def evaluate(session: Session, policy: TrainingPolicy, *, now: datetime) -> Decision | None:
    """The one trigger due for ``policy`` now, if any. Priority: degradation > drift >
    new code > new data > schedule; nothing but an incident within ``debounce_s`` of the
    last run (an incident waits only for a running run: :mod:`hub.triggers.incidents`)."""
    if not policy.enabled:
        return None
    last = aware(policy.last_run_at) if policy.last_run_at else None
    debounced = last is not None and now < last + timedelta(seconds=policy.debounce_s)
    incident = pending_incident(session, policy=policy)
    if debounced and incident is None:  # the debounce holds back everything but incidents
        return None
    from hub.specs import SpecNotFound, get_spec  # torch: only when a policy is checked

    try:
        version = datasets.get_version(session, ref=f"{policy.dataset}@latest")
        code = get_spec(policy.spec).code_version()
    except (NotFound, SpecNotFound):
        return None
    kind: TriggerKind | None = None
    reason = ""
    if incident is not None:
        if policy.field_data:
            have = labelled_field_count(session, model=policy.model_name)
            if have < policy.min_field_records:
                return None  # wait for labelled field data; the alert stays pending
            if policy.min_incident_records > 0:
                fresh = incident_field_count(session, model=policy.model_name, incident=incident)
                if fresh < policy.min_incident_records:
                    return None  # wait for the new regime's labels; the alert stays pending
        kind, reason = incident.kind, incident.reason()
    elif policy.on_new_code and code != policy.last_code_version:
        kind = TriggerKind.NEW_CODE
        reason = (
            f"spec {policy.spec} code is {code[:19]}, last run used "
            f"{(policy.last_code_version or 'none (first run)')[:19]}"
        )
    elif policy.on_new_data and version.id != policy.last_dataset_version_id:
        kind = TriggerKind.NEW_DATA
        reason = f"dataset {policy.dataset} has a new version {version.ref}"
    elif policy.schedule_interval_s is not None and (
        last is None or last + timedelta(seconds=policy.schedule_interval_s) <= now
    ):
        kind = TriggerKind.SCHEDULE
        since = "never ran" if last is None else f"last run {last.isoformat()}"
        reason = f"every {policy.schedule_interval_s}s; {since}"
    if kind is None:
        return None
    if incident is None and version.validation_status not in TRAINABLE:
        if skip_recorded(session, model_name=policy.model_name, version_id=version.id):
            return None
        return Decision(
            kind=kind,
            reason=not_trainable(reason, version),
            version=version,
            code_version=code,
            skip=True,
        )
    return Decision(kind=kind, reason=reason, version=version, code_version=code, incident=incident)


def not_trainable(reason: str, version: DatasetVersion) -> str:
    return (
        f"{reason}; not trained: {version.ref} failed validation. Fix the data or run "
        f"`edgeloop dataset override {version.ref} --reason '...'`"
    )


def skip_recorded(session: Session, *, model_name: str, version_id: int | None) -> bool:
    return (
        session.exec(
            select(TriggerEvent).where(
                TriggerEvent.model_name == model_name,
                TriggerEvent.status == TriggerStatus.SKIPPED,
                TriggerEvent.dataset_version_id == version_id,
            )
        ).first()
        is not None
    )


def due_triggers(
    session: Session, *, now: datetime
) -> list[tuple[TrainingPolicy, TriggerKind, str]]:
    """Policies with a run due at ``now``: (policy, kind, reason); at most one per policy."""
    now = aware(now)
    due = []
    for policy in list_policies(session):
        decision = evaluate(session, policy, now=now)
        if decision is not None and not decision.skip:
            due.append((policy, decision.kind, decision.reason))
    return due


def running(session: Session, *, model_name: str, now: datetime) -> TriggerEvent | None:
    """A started run of ``model_name`` that is not stale, from any process."""
    for event in session.exec(
        select(TriggerEvent).where(
            TriggerEvent.model_name == model_name, TriggerEvent.status == TriggerStatus.STARTED
        )
    ).all():
        if aware(event.at) > now - STALE_AFTER:
            return event
    return None
