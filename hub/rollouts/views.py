"""What ``show`` and ``list`` return: per-phase state, devices and gates, and per-device status."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from hub.core.clock import aware, utcnow
from hub.rollouts._shadow import view as shadow_view
from hub.rollouts.service import devices_of
from hub.tables.rollouts import DeviceState, Rollout, RolloutDevice, RolloutEvent, RolloutState

#: What an agent's DOWNLOADED event says when the hub had no free download slot at first
#: (proto ``DeploymentEvent.reason``; the controller keeps it as the row's reason).
_SLOT_WAIT = re.compile(r"waited ([0-9.]+) s for a download slot \((\d+)x\)")
_NOT_STREAMING = {DeviceState.COMMANDED, DeviceState.RECEIVED}
_STREAMING = {DeviceState.DOWNLOADING}


def _phase_state(rollout: Rollout, index: int) -> str:
    recorded = rollout.phase_results.get(str(index), {}).get("state")
    if recorded in {"passed", "advanced", "failed"}:
        return str(recorded)
    if index > rollout.phase:
        return (
            "skipped"
            if rollout.state in {"rolled_back", "rolling_back", "cancelled"}
            else ("pending")
        )
    if index < rollout.phase:
        return "passed"
    if rollout.state == RolloutState.COMPLETED:
        return "passed"
    if rollout.state == RolloutState.SHADOWING:
        return "pending"
    if rollout.state == RolloutState.AWAITING_APPROVAL:
        return "awaiting_approval"
    if rollout.state == RolloutState.RUNNING:
        return "baking" if rollout.phase_commanded_at is not None else "commanding"
    return str(rollout.state)


def _device(d: RolloutDevice) -> dict[str, Any]:
    return {
        "id": d.device_id,
        "phase": d.phase,
        "state": d.state,
        "late": d.late,
        "command_id": d.command_id,
        "attempts": d.attempts,
        "previous_version": d.previous_version,
        "rollback_command_id": d.rollback_command_id,
        "rollback_attempts": d.rollback_attempts,
        "reason": d.reason,
        "commanded_at": d.commanded_at.isoformat() if d.commanded_at else None,
    }


def _spread(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"devices": 0, "p50_s": None, "p95_s": None, "max_s": None}
    ordered = sorted(values)
    return {
        "devices": len(ordered),
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "max_s": round(ordered[-1], 3),
    }


def queue_view(session: Session, rollout: Rollout, rows: Sequence[RolloutDevice]) -> dict[str, Any]:
    """Where the rollout's devices queue for downloads.

    ``waiting_for_slot``: devices of started phases not commanded yet (the controller
    admits new downloads only into the artifact server's free slots, and within the rate
    limits); ``oldest_wait_s``: how long the first of them has waited (since its phase
    started). ``commanded``/``downloading``: commanded devices not streaming yet, and
    streaming. ``admission_wait``: per commanded device of a phase (late joiners aside),
    from its phase's start to its command. ``slot_refusals``: devices the artifact server
    told to wait (all slots busy), and their waits (from their DOWNLOADED events)."""
    started: dict[int, Any] = {}
    for phase, at in session.exec(
        select(RolloutEvent.phase, RolloutEvent.at).where(
            RolloutEvent.rollout_id == rollout.id, RolloutEvent.kind == "phase_started"
        )
    ).all():
        if phase is not None:
            started[phase] = aware(at)  # the latest start of a phase (a retry restarts none)
    running = rollout.state in {RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL}
    now = utcnow()
    waiting = [
        d
        for d in rows
        if running and d.state == DeviceState.PENDING and 0 <= d.phase <= rollout.phase
    ]
    waits = [
        (now - started[d.phase]).total_seconds()
        for d in waiting
        if not d.late and started.get(d.phase) is not None
    ]
    admission: list[float] = []
    refused: list[float] = []
    for d in rows:
        phase_start, commanded = started.get(d.phase), aware(d.commanded_at)
        if not d.late and d.attempts == 1 and phase_start and commanded:
            admission.append(max(0.0, (commanded - phase_start).total_seconds()))
        if match := _SLOT_WAIT.search(d.reason or ""):
            refused.append(float(match.group(1)))
    return {
        "waiting_for_slot": len(waiting),
        "oldest_wait_s": round(max(waits), 3) if waits else None,
        "commanded": sum(d.state in _NOT_STREAMING for d in rows),
        "downloading": sum(d.state in _STREAMING for d in rows),
        "admission_wait": _spread(admission),
        "slot_refusals": _spread(refused),
    }


def summary(rollout: Rollout) -> dict[str, Any]:
    return {
        "id": rollout.id,
        "model": rollout.model,
        "version": rollout.version,
        "state": rollout.state,
        "phase": rollout.phase,
        "selector": rollout.selector,
        "reason": rollout.reason,
        "created_at": rollout.created_at.isoformat(),
        "finished_at": rollout.finished_at.isoformat() if rollout.finished_at else None,
        # what the rollout did with its promote_alias (None until its last phase passed)
        "promotion": dict(rollout.promotion) if rollout.promotion else None,
    }


def rollout_view(session: Session, rollout: Rollout, *, events: int = 50) -> dict[str, Any]:
    rows = devices_of(session, rollout_id=rollout.id)
    phases = []
    for index, phase in enumerate(rollout.phases):
        members = [d for d in rows if d.phase == index]
        phases.append(
            {
                "index": index,
                "size": phase["spec"],
                "approval": bool(phase.get("approval")),
                "state": _phase_state(rollout, index),
                "devices": {"total": len(members), **Counter(str(d.state) for d in members)},
                "gates": rollout.phase_results.get(str(index), {}).get("gates", []),
            }
        )
    log = session.exec(
        select(RolloutEvent)
        .where(RolloutEvent.rollout_id == rollout.id)
        .order_by(col(RolloutEvent.id).desc())
        .limit(events)
    ).all()
    return {
        **summary(rollout),
        "bundle_digest": rollout.bundle_digest,
        "on_failure": rollout.on_failure,
        "bake_s": rollout.bake_s,
        "min_reporting": rollout.min_reporting,
        "device_timeout_s": rollout.device_timeout_s,
        "gate_config": rollout.gates,
        "promote_alias": rollout.promote_alias,
        "shadow": shadow_view(session, rollout),
        "phases": phases,
        "devices": [_device(d) for d in rows],
        "device_states": dict(Counter(str(d.state) for d in rows)),
        "queue": queue_view(session, rollout, rows),
        "events": [
            {
                "at": e.at.isoformat(),
                "kind": e.kind,
                "phase": e.phase,
                "device_id": e.device_id,
                "detail": e.detail,
            }
            for e in reversed(log)
        ],
    }
