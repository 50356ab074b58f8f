"""What ``show`` and ``list`` return: per-phase state, devices and gates, and per-device status."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlmodel import Session, col, select

from hub.rollouts._shadow import view as shadow_view
from hub.rollouts.service import devices_of
from hub.tables.rollouts import Rollout, RolloutDevice, RolloutEvent, RolloutState


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
