"""The optional pre-rollout shadow phase (docs/ROLLOUTS.md, "Shadow phase").

Before any device serves the candidate, a deterministic sample of the matched devices (the
same stable order phases use, so the sample is the first canaries) gets a ``Shadow``
command: the agent downloads and verifies the candidate and runs it beside the active model
on ``sample_fraction`` of its requests, reporting agreement in its telemetry windows
(``ShadowStats``). Once every sampled device answered (or timed out) and ``bake_s`` passed,
the shadow gates decide; either way every sampled device then gets ``Shadow{stop=true}``,
and the rollout goes on to phase 0, or pauses / ends rolled back (nothing was served) as
``on_failure`` says. Too little shadow traffic pauses it with "insufficient shadow data"
(the devices keep shadowing; ``resume`` re-evaluates).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from hub.core.clock import aware, utcnow
from hub.core.errors import InvalidInput
from hub.rollouts._rows import Member
from hub.rollouts.events import log_event
from hub.rollouts.gates import GateResult, merged_gates
from hub.rollouts.phases import Candidate, order, site_of
from hub.tables import DeploymentEventRow, TelemetryWindowRow
from hub.tables.rollouts import Rollout, RolloutShadow, RolloutState, ShadowState
from proto import messages_pb2 as pb

R, S = RolloutState, ShadowState
DEFAULTS: dict[str, float] = {
    "fraction_of_devices": 0.1,
    "sample_fraction": 1.0,
    "bake_s": 60.0,
    "min_agreement": 0.9,
}
IN_FLIGHT = {S.COMMANDED, S.RECEIVED, S.DOWNLOADING, S.VERIFIED}
SETTLED = {S.STOPPED, S.FAILED, S.TIMED_OUT}  # nothing more to expect from the device
_EVENT_STATE = {
    "received": S.RECEIVED,
    "downloading": S.DOWNLOADING,
    "downloaded": S.DOWNLOADING,
    "verified": S.VERIFIED,
    "activated": S.SHADOWING,
    "failed": S.FAILED,
}
_RANK = {S.COMMANDED: 0, S.RECEIVED: 1, S.DOWNLOADING: 2, S.VERIFIED: 3, S.TIMED_OUT: 4}


def parse_shadow(value: dict[str, Any] | None) -> dict[str, float]:
    """The stored shadow settings ({} = no shadow phase), defaults filled in, validated."""
    if not value:
        return {}
    unknown = set(value) - set(DEFAULTS)
    if unknown:
        raise InvalidInput(f"unknown shadow settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    try:
        cfg = {k: float(value.get(k, d)) for k, d in DEFAULTS.items()}
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"shadow settings must be numbers: {exc}") from None
    for name in ("fraction_of_devices", "sample_fraction"):
        if not 0 < cfg[name] <= 1:
            raise InvalidInput(f"shadow {name} must be in (0, 1], not {cfg[name]:g}")
    if not 0 <= cfg["min_agreement"] <= 1 or cfg["bake_s"] < 0:
        raise InvalidInput("shadow min_agreement must be in [0, 1] and bake_s >= 0")
    return cfg


def pending(rollout: Rollout) -> bool:
    return bool(rollout.shadow) and not rollout.shadow_done


def rows_of(session: Session, rollout_id: str) -> list[RolloutShadow]:
    return list(
        session.exec(
            select(RolloutShadow)
            .where(RolloutShadow.rollout_id == rollout_id)
            .order_by(col(RolloutShadow.device_id))
        ).all()
    )


def stage_stops(session: Session, rollout: Rollout) -> int:
    """Give every sampled device that may be shadowing a ``Shadow{stop}`` (once)."""
    count = 0
    for row in rows_of(session, rollout.id):
        if row.stop_command_id or row.state == S.FAILED:
            continue
        row.stop_command_id, row.stop_issued_at_ms = (
            uuid.uuid4().hex,
            int(utcnow().timestamp() * 1e3),
        )
        session.add(row)
        count += 1
    return count


def finish(session: Session, rollout: Rollout, *, state: str, reason: str) -> None:
    """End the shadow phase (passed, failed or advanced): stop every shadow, record it."""
    stage_stops(session, rollout)
    rollout.shadow_done = True
    results = dict(rollout.phase_results)
    results["shadow"] = {**results.get("shadow", {}), "state": state, "at": utcnow().isoformat()}
    rollout.phase_results = results
    log_event(session, rollout, f"shadow_{state}", reason)
    session.add(rollout)


def drive(session: Session, rollout: Rollout, devices: dict[str, Member]) -> None:
    """One controller step of a rollout whose shadow phase is not done."""
    cfg = parse_shadow(rollout.shadow)
    if rollout.state != R.SHADOWING:
        rollout.state, rollout.reason = R.SHADOWING, "shadow phase"
        session.add(rollout)
    if rollout.shadow_started_at is None:
        _start(session, rollout, devices, cfg)
        return
    rows = sync(session, rollout)
    if any(r.state in IN_FLIGHT for r in rows):
        return
    if rollout.shadow_answered_at is None:
        rollout.shadow_answered_at = utcnow()
        session.add(rollout)
    answered = aware(rollout.shadow_answered_at) or utcnow()
    if utcnow() - answered < timedelta(seconds=cfg["bake_s"]):
        return
    gates = shadow_gates(session, rollout, rows, cfg)
    as_dicts = [g.to_dict() for g in gates]
    results = dict(rollout.phase_results)
    results["shadow"] = {"state": "evaluated", "gates": as_dicts, "at": utcnow().isoformat()}
    rollout.phase_results = results
    rollout.updated_at = utcnow()
    if any(g.insufficient_data for g in gates) and all(g.passed for g in gates):
        rollout.state = R.PAUSED
        rollout.reason = "insufficient shadow data: " + "; ".join(
            g.detail for g in gates if g.insufficient_data
        )
        log_event(session, rollout, "paused", rollout.reason, data={"gates": as_dicts})
        session.add(rollout)
        return
    failed = [g.name for g in gates if not g.passed]
    if not failed:
        finish(session, rollout, state="passed", reason="shadow gates passed")
        rollout.state, rollout.reason = R.RUNNING, "shadow phase passed"
        return
    rollout.reason = f"shadow phase failed gates: {', '.join(failed)}"
    finish(session, rollout, state="failed", reason=rollout.reason)
    log_event(session, rollout, "gates_failed", rollout.reason, data={"gates": as_dicts})
    rollout.state = R.PAUSED if rollout.on_failure == "pause" else R.ROLLING_BACK


def _start(
    session: Session, rollout: Rollout, devices: dict[str, Member], cfg: dict[str, float]
) -> None:
    pool = [
        Candidate(device_id=d.id, site=site_of(d.group, d.tags or {}), online=d.online)
        for d in devices.values()
    ]
    if not pool:
        return  # nothing matches yet: wait
    size = max(1, math.ceil(len(pool) * cfg["fraction_of_devices"] - 1e-9))
    chosen = order(rollout.id, pool)[:size]
    issued = utcnow()
    for device_id in chosen:
        session.add(
            RolloutShadow(
                rollout_id=rollout.id,
                device_id=device_id,
                command_id=uuid.uuid4().hex,
                issued_at_ms=int(issued.timestamp() * 1000),
                commanded_at=issued,
            )
        )
    rollout.shadow_started_at, rollout.updated_at = issued, issued
    session.add(rollout)
    log_event(
        session,
        rollout,
        "shadow_started",
        f"{len(chosen)} of {len(pool)} devices, sample_fraction {cfg['sample_fraction']:g}",
        data={"devices": chosen},
    )


def sync(session: Session, rollout: Rollout) -> list[RolloutShadow]:
    """Move the sample's rows forward from their devices' events (and time them out)."""
    rows = rows_of(session, rollout.id)
    by_id = {r.command_id: r for r in rows if r.command_id}
    stops = {r.stop_command_id: r for r in rows if r.stop_command_id}
    if by_id or stops:
        events = session.exec(
            select(DeploymentEventRow)
            .where(col(DeploymentEventRow.command_id).in_([*by_id, *stops]))
            .order_by(col(DeploymentEventRow.id))
        ).all()
    else:
        events = []
    for e in events:
        if (row := stops.get(e.command_id)) is not None:
            if e.kind == "healthy" and row.state != S.STOPPED:
                row.state, row.reason = S.STOPPED, e.reason
                session.add(row)
                log_event(session, rollout, "shadow_stopped", e.reason, device_id=row.device_id)
            continue
        row = by_id[e.command_id]
        new = _EVENT_STATE.get(e.kind)
        if new is None or row.state in {S.SHADOWING, S.FAILED, S.STOPPED}:
            continue
        if new in _RANK and _RANK[new] <= _RANK.get(S(row.state), 0):
            continue
        row.state, row.reason = new, e.reason or row.reason
        session.add(row)
        if new in {S.SHADOWING, S.FAILED}:
            log_event(session, rollout, f"shadow_{new}", e.reason, device_id=row.device_id)
    limit = utcnow() - timedelta(seconds=rollout.device_timeout_s)
    for row in rows:
        at, stop_at = aware(row.commanded_at), aware(row.stop_published_at)
        if row.state in IN_FLIGHT and row.published_at is not None and at and at < limit:
            row.reason = f"no answer in {rollout.device_timeout_s:g} s"
        elif row.state not in SETTLED and stop_at is not None and stop_at < limit:
            row.reason = f"no answer to the stop in {rollout.device_timeout_s:g} s"
        else:
            continue
        row.state = S.TIMED_OUT
        session.add(row)
        log_event(session, rollout, "shadow_timed_out", row.reason, device_id=row.device_id)
    return rows


def shadow_gates(
    session: Session, rollout: Rollout, rows: list[RolloutShadow], cfg: dict[str, float]
) -> list[GateResult]:
    """``shadow_install_failure_rate``, ``shadow_agreement`` (agreed / compared, with the
    errors and mean latency delta in its detail) and ``shadow_error_rate`` (candidate
    inferences that raised / those run) over the sampled devices' telemetry."""
    gates_cfg = merged_gates(rollout.gates)
    states = Counter(r.state for r in rows)
    loaded, failed = states[S.SHADOWING] + states[S.STOPPED], states[S.FAILED]
    max_fail = float(gates_cfg["max_install_failure_rate"])
    fail_rate = failed / (loaded + failed) if loaded + failed else 1.0
    results = [
        GateResult(
            name="shadow_install_failure_rate",
            value=fail_rate,
            threshold=max_fail,
            passed=loaded > 0 and fail_rate <= max_fail,
            samples=loaded + failed,
            detail=f"{failed} failed, {loaded} shadowing, {states[S.TIMED_OUT]} timed out",
        )
    ]
    since = aware(rollout.shadow_started_at) or utcnow()
    devices = [r.device_id for r in rows]
    windows = session.exec(
        select(TelemetryWindowRow).where(
            TelemetryWindowRow.model == rollout.model,
            col(TelemetryWindowRow.device_id).in_(devices),
            TelemetryWindowRow.window_end >= since,
        )
    ).all()
    stats = [
        w.shadow
        for w in windows
        if w.shadow
        and str(w.shadow.get("version", "")) == rollout.version
        and str(w.shadow.get("model", rollout.model)) in {rollout.model, ""}
    ]
    compared = sum(int(s.get("compared", 0)) for s in stats)
    agreed = sum(int(s.get("agreed", 0)) for s in stats)
    errors = sum(int(s.get("errors", 0)) for s in stats)
    delta = sum(float(s.get("latency_delta_ms", 0.0)) * int(s.get("compared", 0)) for s in stats)
    floor, min_n = cfg["min_agreement"], int(gates_cfg["min_predictions"])
    if compared + errors < min_n:
        why = f"{compared} compared, {errors} errors (need {min_n})"
        for name, threshold in (("shadow_agreement", floor), ("shadow_error_rate", 0.0)):
            results.append(
                GateResult(
                    name=name,
                    value=None,
                    threshold=threshold,
                    passed=True,
                    insufficient_data=True,
                    detail=why,
                )
            )
        return results
    mean_delta = delta / compared if compared else 0.0
    agreement = agreed / compared if compared else 0.0
    results.append(
        GateResult(
            name="shadow_agreement",
            value=agreement,
            threshold=floor,
            passed=compared > 0 and agreement >= floor,
            samples=compared,
            detail=f"{agreed} of {compared} agreed; mean latency delta {mean_delta:+.3f} ms",
        )
    )
    error_rate, max_errors = errors / (compared + errors), float(gates_cfg["max_error_rate"])
    results.append(
        GateResult(
            name="shadow_error_rate",
            value=error_rate,
            threshold=max_errors,
            passed=error_rate <= max_errors,
            samples=compared + errors,
            detail=f"{errors} candidate inferences raised",
        )
    )
    return results


def view(session: Session, rollout: Rollout) -> dict[str, Any] | None:
    """The shadow phase for ``rollout show`` (None when the rollout has none)."""
    if not rollout.shadow:
        return None
    rows = rows_of(session, rollout.id)
    recorded = rollout.phase_results.get("shadow", {})
    state = recorded.get("state") if rollout.shadow_done else None
    if state is None:
        state = "pending" if rollout.shadow_started_at is None else "shadowing"
        if rollout.state in {R.CANCELLED, R.ROLLED_BACK, R.ROLLING_BACK}:
            state = "skipped"
    return {
        "config": parse_shadow(rollout.shadow),
        "state": state,
        "devices": {"total": len(rows), **Counter(str(r.state) for r in rows)},
        "device_ids": [r.device_id for r in rows],
        "gates": recorded.get("gates", []),
    }


def commands(
    rollout: Rollout,
    row: RolloutShadow,
    *,
    endpoint: str,
    links: Callable[[str], tuple[str, int] | None] | None = None,
) -> list[tuple[str, Any]]:
    """(field to mark published, command) for this row's unpublished Shadow commands."""
    out: list[tuple[str, Any]] = []
    cfg = parse_shadow(rollout.shadow) or DEFAULTS
    if row.command_id and row.published_at is None and not row.stop_command_id:
        shadow = pb.Shadow(
            rollout_id=rollout.id,
            model=rollout.model,
            version=rollout.version,
            bundle_digest=rollout.bundle_digest,
            bundle_size=rollout.bundle_size,
            artifact_endpoint=endpoint,
            sample_fraction=cfg["sample_fraction"],
        )
        if links is not None and (link := links(rollout.bundle_digest)) is not None:
            shadow.bundle_url, shadow.bundle_url_expires_at = link
        command = pb.Command(
            command_id=row.command_id,
            device_id=row.device_id,
            issued_at=row.issued_at_ms,
            shadow=shadow,
        )
        out.append(("published_at", command))
    if row.stop_command_id and row.stop_published_at is None:
        stop = pb.Command(
            command_id=row.stop_command_id,
            device_id=row.device_id,
            issued_at=row.stop_issued_at_ms,
            shadow=pb.Shadow(rollout_id=rollout.id, stop=True),
        )
        out.append(("stop_published_at", stop))
    return out
