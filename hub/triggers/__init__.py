"""Continuous training: policies per model and the triggers that start runs."""

from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus
from hub.triggers.service import (
    STALE_AFTER,
    due_triggers,
    get_policy,
    list_events,
    run_triggers,
    set_policy,
    trigger_now,
)

__all__ = [
    "STALE_AFTER",
    "TrainingPolicy",
    "TriggerEvent",
    "TriggerKind",
    "TriggerStatus",
    "due_triggers",
    "get_policy",
    "list_events",
    "run_triggers",
    "set_policy",
    "trigger_now",
]
