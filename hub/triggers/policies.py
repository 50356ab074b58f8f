"""Training policies: one per model, saying when it retrains and what follows a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlmodel import Session, col, select

from hub.core.errors import InvalidInput, NotFound
from hub.tables.triggers import TrainingPolicy, TriggerEvent

CANARY_KEYS = frozenset(
    {"selector", "phases", "bake_s", "min_reporting", "on_failure", "formats", "gates"}
)


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
    on_drift: bool = True,
    on_degradation: bool = True,
    field_data: bool = True,
    min_field_records: int = 50,
    min_incident_records: int = 1000,
    field_device_share: float = 0.1,
    fine_tune_epochs: int = 10,
    canary: Mapping[str, Any] | None = None,
    debounce_s: int = 300,
) -> TrainingPolicy:
    """Create or replace the policy of ``model_name`` (its last_* history is kept).

    ``canary``: when set (at least a ``selector``), every version a triggered run registers is
    packaged and rolled out as a canary with these rollout settings (``phases`` default
    ``1,50%,100%``); the version becomes ``production`` when its rollout completes.
    """
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
    if min_field_records < 1:
        raise InvalidInput("min_field_records must be at least 1")
    if min_incident_records < 0:
        raise InvalidInput("min_incident_records must be zero or positive")
    if fine_tune_epochs < 0:
        raise InvalidInput("fine_tune_epochs must be zero (train afresh) or positive")
    if not 0 < field_device_share <= 1:
        raise InvalidInput("field_device_share must be in (0, 1]")
    canary_settings = dict(canary or {})
    unknown = set(canary_settings) - CANARY_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown canary settings {sorted(unknown)}; known: {sorted(CANARY_KEYS)}"
        )
    if canary_settings and not canary_settings.get("selector"):
        raise InvalidInput("a canary needs a selector (e.g. 'all' or 'group=canary')")
    from hub.specs import SpecNotFound, get_spec  # torch: only when a policy is set

    try:
        get_spec(spec).params(params)
    except (SpecNotFound, ValueError) as exc:
        raise InvalidInput(str(exc)) from exc
    policy = find_policy(session, model_name=model_name) or TrainingPolicy(
        model_name=model_name, spec=spec, dataset=dataset
    )
    policy.spec, policy.dataset, policy.params = spec, dataset, dict(params or {})
    policy.schedule_interval_s = schedule_interval_s
    policy.on_new_data, policy.on_new_code = on_new_data, on_new_code
    policy.on_drift, policy.on_degradation = on_drift, on_degradation
    policy.field_data, policy.min_field_records = field_data, min_field_records
    policy.min_incident_records = min_incident_records
    policy.field_device_share = field_device_share
    policy.fine_tune_epochs = fine_tune_epochs
    policy.canary = canary_settings
    policy.debounce_s, policy.enabled = debounce_s, True
    session.add(policy)
    session.flush()
    return policy


def get_policy(session: Session, *, model_name: str) -> TrainingPolicy:
    policy = find_policy(session, model_name=model_name)
    if policy is None:
        raise NotFound(f"no training policy for model {model_name!r}; set one first")
    return policy


def find_policy(session: Session, *, model_name: str) -> TrainingPolicy | None:
    return session.exec(
        select(TrainingPolicy).where(TrainingPolicy.model_name == model_name)
    ).first()


def list_policies(session: Session) -> list[TrainingPolicy]:
    return list(session.exec(select(TrainingPolicy).order_by(col(TrainingPolicy.id))).all())


def list_events(session: Session, *, model_name: str | None = None) -> list[TriggerEvent]:
    query = select(TriggerEvent).order_by(col(TriggerEvent.id))
    if model_name is not None:
        query = query.where(TriggerEvent.model_name == model_name)
    return list(session.exec(query).all())
