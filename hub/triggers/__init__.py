"""Continuous training: policies per model and the triggers that start runs."""

from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus
from hub.triggers.decide import STALE_AFTER, due_triggers
from hub.triggers.field_data import FieldImport, import_field_data
from hub.triggers.followup import Followup, FollowupResult, PackageAndCanary
from hub.triggers.label_quality import (
    DeviceLabels,
    consensus_check,
    lift_quarantine,
    list_quarantine,
    quarantined_devices,
)
from hub.triggers.policies import get_policy, list_events, list_policies, set_policy
from hub.triggers.service import run_triggers, trigger_now

__all__ = [
    "STALE_AFTER",
    "DeviceLabels",
    "FieldImport",
    "Followup",
    "FollowupResult",
    "PackageAndCanary",
    "TrainingPolicy",
    "TriggerEvent",
    "TriggerKind",
    "TriggerStatus",
    "consensus_check",
    "due_triggers",
    "get_policy",
    "import_field_data",
    "lift_quarantine",
    "list_events",
    "list_policies",
    "list_quarantine",
    "quarantined_devices",
    "run_triggers",
    "set_policy",
    "trigger_now",
]
