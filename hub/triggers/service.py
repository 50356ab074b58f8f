"""Continuous-training triggers that need nothing from monitoring.

A policy per model says when to retrain: on demand, on a schedule, when the dataset gets a
new version, when the spec's code changes. ``run_triggers`` evaluates every enabled policy
and starts at most one run per model; every decision is a ``trigger_event`` row with its
reason. One run per model at a time: an in-process lock per model, and in the database a
``started`` event younger than ``STALE_AFTER`` (a crashed run's row stops counting then).

Database work happens in short transactions around the training, never across it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.artifacts import ArtifactStore
from hub.datasets import service as datasets
from hub.db import session_scope
from hub.errors import Conflict, InvalidInput, NotFound
from hub.specs import SpecNotFound, get_spec
from hub.tables import DatasetVersion
from hub.tables._common import utcnow
from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus
from hub.training.service import TrainOutcome, train

STALE_AFTER = timedelta(hours=6)
TRAINABLE = frozenset({"passed", "overridden"})


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
    ) -> TrainOutcome: ...


@dataclass(frozen=True, kw_only=True)
class _Decision:
    kind: TriggerKind
    reason: str
    version: DatasetVersion
    code_version: str
    skip: bool = False


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _model_lock(model_name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model_name, threading.Lock())


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- policies ---------------------------------------------------------------------------


def set_policy(
    session: Session,
    *,
    model_name: str,
    spec: str,
    dataset: str,
    params: Mapping[str, Any] | None = None,
    schedule_interval_s: int | None = None,
    on_new_data: bool = True,
    on_new_code: bool = True,
    debounce_s: int = 300,
) -> TrainingPolicy:
    """Create or replace the policy of ``model_name`` (its last_* history is kept)."""
    if not model_name or "@" in model_name:
        raise InvalidInput(f"model name {model_name!r} must be non-empty without '@'")
    if not dataset or "@" in dataset:
        raise InvalidInput(
            f"dataset {dataset!r} must be a dataset NAME (runs always use its latest version)"
        )
    if schedule_interval_s is not None and schedule_interval_s <= 0:
        raise InvalidInput("schedule_interval_s must be positive (or None for no schedule)")
    if debounce_s < 0:
        raise InvalidInput("debounce_s must be zero or positive")
    try:
        get_spec(spec).params(params)
    except (SpecNotFound, ValueError) as exc:
        raise InvalidInput(str(exc)) from exc
    policy = _find_policy(session, model_name=model_name) or TrainingPolicy(
        model_name=model_name, spec=spec, dataset=dataset
    )
    policy.spec, policy.dataset, policy.params = spec, dataset, dict(params or {})
    policy.schedule_interval_s = schedule_interval_s
    policy.on_new_data, policy.on_new_code = on_new_data, on_new_code
    policy.debounce_s, policy.enabled = debounce_s, True
    session.add(policy)
    session.flush()
    return policy


def get_policy(session: Session, *, model_name: str) -> TrainingPolicy:
    policy = _find_policy(session, model_name=model_name)
    if policy is None:
        raise NotFound(f"no training policy for model {model_name!r}; set one first")
    return policy


def list_events(session: Session, *, model_name: str | None = None) -> list[TriggerEvent]:
    query = select(TriggerEvent).order_by(col(TriggerEvent.id))
    if model_name is not None:
        query = query.where(TriggerEvent.model_name == model_name)
    return list(session.exec(query).all())


def _find_policy(session: Session, *, model_name: str) -> TrainingPolicy | None:
    return session.exec(
        select(TrainingPolicy).where(TrainingPolicy.model_name == model_name)
    ).first()


# --- evaluation -------------------------------------------------------------------------


def _evaluate(session: Session, policy: TrainingPolicy, *, now: datetime) -> _Decision | None:
    """The one trigger due for ``policy`` now (new_code > new_data > schedule), if any."""
    if not policy.enabled:
        return None
    last = _aware(policy.last_run_at) if policy.last_run_at else None
    if last is not None and now < last + timedelta(seconds=policy.debounce_s):
        return None
    try:
        version = datasets.get_version(session, ref=f"{policy.dataset}@latest")
        code = get_spec(policy.spec).code_version()
    except (NotFound, SpecNotFound):
        return None
    kind: TriggerKind | None = None
    reason = ""
    if policy.on_new_code and code != policy.last_code_version:
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
    if version.validation_status not in TRAINABLE:
        if _skip_recorded(session, model_name=policy.model_name, version_id=version.id):
            return None
        reason = (
            f"{reason}; not trained: {version.ref} failed validation. Fix the data or run "
            f"`edgeloop dataset override {version.ref} --reason '...'`"
        )
        return _Decision(kind=kind, reason=reason, version=version, code_version=code, skip=True)
    return _Decision(kind=kind, reason=reason, version=version, code_version=code)


def _skip_recorded(session: Session, *, model_name: str, version_id: int | None) -> bool:
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
    now = _aware(now)
    due = []
    for policy in session.exec(select(TrainingPolicy).order_by(col(TrainingPolicy.id))).all():
        decision = _evaluate(session, policy, now=now)
        if decision is not None and not decision.skip:
            due.append((policy, decision.kind, decision.reason))
    return due


def _running(session: Session, *, model_name: str, now: datetime) -> TriggerEvent | None:
    """A started run of ``model_name`` that is not stale, from any process."""
    for event in session.exec(
        select(TriggerEvent).where(
            TriggerEvent.model_name == model_name, TriggerEvent.status == TriggerStatus.STARTED
        )
    ).all():
        if _aware(event.at) > now - STALE_AFTER:
            return event
    return None


# --- running ----------------------------------------------------------------------------


def run_triggers(
    engine: Engine, store: ArtifactStore, *, now: datetime | None = None, runner: Runner = train
) -> list[TriggerEvent]:
    """Evaluate every policy and start the runs that are due; returns the new events."""
    now = _aware(now or utcnow())
    with session_scope(engine) as s:
        names = [p.model_name for p in s.exec(select(TrainingPolicy)).all() if p.enabled]
    events = []
    for name in names:
        event = _run_one(engine, store, model_name=name, now=now, runner=runner)
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
    runner: Runner = train,
) -> TriggerEvent:
    """Train ``model_name`` now, ignoring debounce; refused while one of its runs is going."""
    if not reason.strip():
        raise InvalidInput("an on-demand run needs a reason; it is kept with the event")
    event = _run_one(
        engine,
        store,
        model_name=model_name,
        now=_aware(now or utcnow()),
        runner=runner,
        on_demand=reason.strip(),
    )
    assert event is not None  # on demand either runs, records a skip, or raises
    return event


def _run_one(
    engine: Engine,
    store: ArtifactStore,
    *,
    model_name: str,
    now: datetime,
    runner: Runner,
    on_demand: str | None = None,
) -> TriggerEvent | None:
    lock = _model_lock(model_name)
    if not lock.acquire(blocking=False):
        if on_demand is not None:
            raise Conflict(f"model {model_name} is already training; try again when it is done")
        return None
    try:
        event = _start(engine, model_name=model_name, now=now, on_demand=on_demand)
        if event is None or event.status == TriggerStatus.SKIPPED:
            return event
        return _train(engine, store, event=event, now=now, runner=runner)
    finally:
        lock.release()


def _start(
    engine: Engine, *, model_name: str, now: datetime, on_demand: str | None
) -> TriggerEvent | None:
    """Decide, then record the ``started`` (or ``skipped``) event in one transaction."""
    with session_scope(engine) as s:
        policy = s.exec(
            select(TrainingPolicy).where(TrainingPolicy.model_name == model_name).with_for_update()
        ).first()
        if policy is None:
            raise NotFound(f"no training policy for model {model_name!r}; set one first")
        running = _running(s, model_name=model_name, now=now)
        if running is not None:
            if on_demand is not None:
                raise Conflict(
                    f"model {model_name} is already training (event {running.id} started "
                    f"{_aware(running.at).isoformat()}); try again when it is done"
                )
            return None
        if on_demand is not None:
            version = datasets.get_version(s, ref=f"{policy.dataset}@latest")
            datasets.require_trainable(version)
            decision: _Decision | None = _Decision(
                kind=TriggerKind.ON_DEMAND,
                reason=on_demand,
                version=version,
                code_version=get_spec(policy.spec).code_version(),
            )
        else:
            decision = _evaluate(s, policy, now=now)
        if decision is None:
            return None
        event = TriggerEvent(
            model_name=model_name,
            kind=decision.kind,
            reason=decision.reason,
            at=now,
            status=TriggerStatus.SKIPPED if decision.skip else TriggerStatus.STARTED,
            detail=f"dataset {decision.version.ref}",
            dataset_version_id=decision.version.id,
            code_version=decision.code_version,
        )
        s.add(event)
        s.flush()
        return event


def _train(
    engine: Engine, store: ArtifactStore, *, event: TriggerEvent, now: datetime, runner: Runner
) -> TriggerEvent:
    with session_scope(engine) as s:
        policy = get_policy(s, model_name=event.model_name)
        version = datasets.get_by_id(s, version_id=event.dataset_version_id or 0)
        spec, params = policy.spec, dict(policy.params)
    status, run_id, detail = TriggerStatus.FINISHED, None, f"dataset {version.ref}"
    try:
        outcome = runner(
            engine,
            store,
            spec_name=spec,
            dataset=version.ref,
            params=params,
            model_name=event.model_name,
        )
        run_id = outcome.run.id
        mv = outcome.model_version
        if mv is not None:
            detail += f"; registered {mv.model_name}@{mv.version}"
    except Exception as exc:  # recorded on the event; other models go on
        status, detail = TriggerStatus.FAILED, f"{detail}; {exc!r}"[:2000]
    with session_scope(engine) as s:
        stored = s.get(TriggerEvent, event.id)
        assert stored is not None
        stored.status, stored.run_id, stored.detail = status, run_id, detail
        policy = get_policy(s, model_name=event.model_name)
        # a failed run also counts: one incident triggers one run, not a retry loop
        policy.last_run_at = now
        policy.last_dataset_version_id = event.dataset_version_id
        policy.last_code_version = event.code_version
        s.add_all([stored, policy])
        s.flush()
        return stored
