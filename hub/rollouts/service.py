"""Rollout operations as plain keyword-only functions (the API, CLI and triggers call these).

They only write intent to the database; the controller (``hub.rollouts.controller``) acts on
it at its next tick. See docs/ROLLOUTS.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from hub.core.clock import aware, utcnow
from hub.core.errors import Conflict, InvalidInput, NotFound
from hub.registry import models as registry
from hub.rollouts import _shadow
from hub.rollouts.events import log_event
from hub.rollouts.gates import Evidence, Scope, evaluate, merged_gates, promotion_evidence
from hub.rollouts.phases import parse_phases
from hub.rollouts.selectors import parse_selector
from hub.tables import Bundle
from hub.tables.rollouts import DeviceState, Rollout, RolloutDevice, RolloutState

if TYPE_CHECKING:
    from hub.security.keys import BundleSignerCheck

ACTIVE = {
    RolloutState.SHADOWING,
    RolloutState.RUNNING,
    RolloutState.AWAITING_APPROVAL,
    RolloutState.PAUSED,
}
FINAL = {RolloutState.COMPLETED, RolloutState.ROLLED_BACK, RolloutState.CANCELLED}


def _bundle_for(session: Session, *, model: str, version: str) -> tuple[str, int]:
    mv = registry.get_version(session, ref=f"{model}@{version}")
    found = registry.bundles_of(session, model_version=mv)
    if not found:
        raise InvalidInput(
            f"{model}@{mv.version} has no bundle; package it first: "
            f"edgeloop package {model}@{mv.version}"
        )
    return found[-1].digest, found[-1].size


def create_rollout(
    session: Session,
    *,
    model: str,
    version: str,
    selector: str,
    phases: str | Sequence[str | int] = "1,10%,50%,100%",
    bundle_digest: str | None = None,
    bundle_size: int | None = None,
    gates: dict[str, Any] | None = None,
    on_failure: str = "rollback",
    bake_s: float = 60.0,
    min_reporting: int = 1,
    device_timeout_s: float = 600.0,
    probation_s: int | None = None,
    approval_phases: Sequence[int] = (),
    join_phase: str = "last",
    max_commands_per_s: float | None = None,
    max_concurrent_downloads: int | None = None,
    shadow: dict[str, Any] | None = None,
    promote_alias: str = "production",
    created_by: str = "",
    signer_check: BundleSignerCheck | None = None,
) -> Rollout:
    """Validate and store a rollout in state ``running`` (``shadowing`` with a shadow phase);
    the controller starts it. ``signer_check`` (the API and triggers pass one) refuses a
    bundle signed with another key than the hub's current one (409)."""
    parse_selector(selector)
    shadow_cfg = _shadow.parse_shadow(shadow)
    if promote_alias and (
        not registry.ALIAS.match(promote_alias) or promote_alias in registry.RESERVED_ALIASES
    ):
        raise InvalidInput(f"promote_alias {promote_alias!r} is not a valid alias ('' = none)")
    specs = parse_phases(phases)
    if on_failure not in {"pause", "rollback"}:
        raise InvalidInput(f"on_failure must be 'pause' or 'rollback', not {on_failure!r}")
    if join_phase not in {"last", "current"}:
        raise InvalidInput(f"join_phase must be 'last' or 'current', not {join_phase!r}")
    bad = [i for i in approval_phases if not 0 <= i < len(specs)]
    if bad:
        raise InvalidInput(f"approval phases {bad} are not phase indexes 0..{len(specs) - 1}")
    if min_reporting < 0 or bake_s < 0 or device_timeout_s <= 0:
        raise InvalidInput("bake_s and min_reporting must be >= 0, device_timeout_s > 0")
    if bundle_digest is None:
        if version in {"latest"} or not version.isdigit():
            version = str(registry.get_version(session, ref=f"{model}@{version}").version)
        bundle_digest, size = _bundle_for(session, model=model, version=version)
        bundle_size = bundle_size or size
    elif bundle_size is None:
        known = session.exec(select(Bundle).where(Bundle.digest == bundle_digest)).first()
        if known is None:
            raise InvalidInput(f"bundle {bundle_digest} is not registered; give bundle_size")
        bundle_size = known.size
    if signer_check is not None:
        signer_check.require_current(digest=bundle_digest, ref=f"{model}@{version}")
    rollout = Rollout(
        id=f"ro-{uuid.uuid4().hex[:12]}",
        model=model,
        version=str(version),
        bundle_digest=bundle_digest,
        bundle_size=int(bundle_size or 0),
        selector=selector,
        phases=[{"spec": str(s), "approval": i in approval_phases} for i, s in enumerate(specs)],
        gates=merged_gates(gates),
        on_failure=on_failure,
        bake_s=bake_s,
        min_reporting=min_reporting,
        device_timeout_s=device_timeout_s,
        probation_s=probation_s,
        join_phase=join_phase,
        max_commands_per_s=max_commands_per_s,
        max_concurrent_downloads=max_concurrent_downloads,
        shadow=shadow_cfg,
        promote_alias=promote_alias,
        state=RolloutState.SHADOWING if shadow_cfg else RolloutState.RUNNING,
        created_by=created_by,
    )
    session.add(rollout)
    log_event(session, rollout, "created", f"{model}@{version} to {selector!r} in {phases}")
    session.flush()
    return rollout


def get_rollout(session: Session, *, rollout_id: str) -> Rollout:
    found = session.get(Rollout, rollout_id)
    if found is None:
        raise NotFound(f"no rollout {rollout_id!r} (list them with: edgeloop rollout list)")
    return found


def list_rollouts(session: Session, *, state: str | None = None) -> Sequence[Rollout]:
    query = select(Rollout).order_by(col(Rollout.created_at).desc())
    if state:
        query = query.where(Rollout.state == state)
    return session.exec(query).all()


def devices_of(session: Session, *, rollout_id: str) -> Sequence[RolloutDevice]:
    return session.exec(
        select(RolloutDevice)
        .where(RolloutDevice.rollout_id == rollout_id)
        .order_by(col(RolloutDevice.phase), col(RolloutDevice.device_id))
    ).all()


def _transition(
    session: Session,
    *,
    rollout_id: str,
    allowed: set[RolloutState],
    to: str,
    kind: str,
    reason: str,
) -> Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id)
    if rollout.state not in allowed:
        raise Conflict(
            f"rollout {rollout_id} is {rollout.state}; {kind} needs one of {sorted(allowed)}"
        )
    rollout.state, rollout.reason, rollout.updated_at = to, reason, utcnow()
    if to in FINAL:
        rollout.finished_at = utcnow()
    log_event(session, rollout, kind, reason)
    session.add(rollout)
    session.flush()
    return rollout


def pause(session: Session, *, rollout_id: str, reason: str = "operator") -> Rollout:
    allowed = {RolloutState.SHADOWING, RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL}
    return _transition(
        session,
        rollout_id=rollout_id,
        allowed=allowed,
        to=RolloutState.PAUSED,
        kind="paused",
        reason=reason,
    )


def resume(session: Session, *, rollout_id: str, reason: str = "operator") -> Rollout:
    return _transition(
        session,
        rollout_id=rollout_id,
        allowed={RolloutState.PAUSED},
        to=RolloutState.RUNNING,
        kind="resumed",
        reason=reason,
    )


def cancel(session: Session, *, rollout_id: str, reason: str = "operator") -> Rollout:
    rollout = _transition(
        session,
        rollout_id=rollout_id,
        allowed=ACTIVE,
        to=RolloutState.CANCELLED,
        kind="cancelled",
        reason=reason,
    )
    for d in devices_of(session, rollout_id=rollout_id):
        if d.state == DeviceState.PENDING:
            d.state, d.reason = DeviceState.SKIPPED, "rollout cancelled"
            session.add(d)
    _end_shadow(session, rollout, state="cancelled", reason=reason)
    session.flush()
    return rollout


def _end_shadow(session: Session, rollout: Rollout, *, state: str, reason: str) -> None:
    if _shadow.pending(rollout):
        _shadow.finish(session, rollout, state=state, reason=reason)


def rollback(session: Session, *, rollout_id: str, reason: str = "operator") -> Rollout:
    allowed = ACTIVE | {RolloutState.COMPLETED, RolloutState.CANCELLED}
    rollout = _transition(
        session,
        rollout_id=rollout_id,
        allowed=allowed,
        to=RolloutState.ROLLING_BACK,
        kind="rollback_requested",
        reason=reason,
    )
    _end_shadow(session, rollout, state="cancelled", reason=reason)
    session.flush()
    return rollout


def advance(session: Session, *, rollout_id: str, reason: str = "operator") -> Rollout:
    """Start the next phase now (phase 0 from the shadow phase), without waiting for bake
    time or gates."""
    rollout = get_rollout(session, rollout_id=rollout_id)
    if rollout.state not in ACTIVE:
        raise Conflict(f"rollout {rollout_id} is {rollout.state}; only an active one advances")
    if _shadow.pending(rollout):
        _shadow.finish(session, rollout, state="advanced", reason=reason)
        rollout.state, rollout.reason, rollout.updated_at = RolloutState.RUNNING, reason, utcnow()
        log_event(session, rollout, "advanced", reason)
        session.flush()
        return rollout
    if rollout.phase >= len(rollout.phases) - 1:
        raise Conflict(f"rollout {rollout_id} is in its last phase already")
    results = dict(rollout.phase_results)
    entry = dict(results.get(str(rollout.phase), {}))
    entry.update(state="advanced", at=utcnow().isoformat(), reason=reason)
    results[str(rollout.phase)] = entry
    rollout.phase_results = results
    rollout.phase += 1
    rollout.phase_started_at = rollout.phase_commanded_at = None
    if rollout.state == RolloutState.AWAITING_APPROVAL:
        rollout.state = RolloutState.RUNNING
    rollout.updated_at = utcnow()
    log_event(session, rollout, "advanced", reason)
    session.add(rollout)
    session.flush()
    return rollout


def approve(session: Session, *, rollout_id: str, reason: str = "operator") -> Rollout:
    rollout = get_rollout(session, rollout_id=rollout_id)
    if rollout.state != RolloutState.AWAITING_APPROVAL:
        raise Conflict(f"rollout {rollout_id} is {rollout.state}, not awaiting approval")
    rollout.approved_phase = rollout.phase
    rollout.state, rollout.updated_at = RolloutState.RUNNING, utcnow()
    log_event(session, rollout, "approved", reason)
    session.add(rollout)
    session.flush()
    return rollout


def retry_failed(session: Session, *, rollout_id: str) -> Rollout:
    """Failed or timed-out devices get a fresh command (a new intent, so a new id)."""
    rollout = get_rollout(session, rollout_id=rollout_id)
    retry = {DeviceState.FAILED, DeviceState.TIMED_OUT}
    if rollout.state == RolloutState.ROLLING_BACK or rollout.state == RolloutState.ROLLED_BACK:
        retry = {DeviceState.ROLLBACK_FAILED}
    elif rollout.state not in ACTIVE | {RolloutState.COMPLETED}:
        raise Conflict(f"rollout {rollout_id} is {rollout.state}; nothing to retry")
    count = 0
    for d in devices_of(session, rollout_id=rollout_id):
        if d.state not in retry:
            continue
        if d.state == DeviceState.ROLLBACK_FAILED:
            d.rollback_command_id, d.rollback_published_at = "", None
            d.state = DeviceState.ACTIVATED  # the controller sends a new Rollback
        else:
            d.command_id, d.published_at, d.commanded_at = "", None, None
            d.state = DeviceState.PENDING
        d.reason = "retry requested"
        session.add(d)
        count += 1
    if rollout.state == RolloutState.ROLLED_BACK and count:
        rollout.state, rollout.finished_at = RolloutState.ROLLING_BACK, None
    log_event(session, rollout, "retry", f"{count} devices")
    session.add(rollout)
    session.flush()
    return rollout


def evidence_now(session: Session, rollout: Rollout) -> Evidence:
    """Every gate over the rollout's devices as they stand now, and the promotion evidence
    they give (what ``promote_now`` decides on)."""
    cfg = merged_gates(rollout.gates)
    devices = [d for d in devices_of(session, rollout_id=rollout.id) if d.phase >= 0]
    scope = Scope(
        rollout=rollout, devices=devices, since=aware(rollout.created_at) or utcnow(), now=utcnow()
    )
    return promotion_evidence(session, scope, cfg, evaluate(session, scope, cfg))


def promote(session: Session, rollout: Rollout, evidence: Evidence, *, override: str = "") -> bool:
    """Decide the promotion of a completed rollout and record it in ``rollout.promotion``.

    The ``promote_alias`` moves (``registry.set_alias``; the alias history keeps the rollout,
    ``verified`` and the evidence) when ``evidence`` verifies it, or without that evidence
    when the gate setting ``promote_unverified`` is set or an operator gives an ``override``
    reason; otherwise the alias stays (``promotion_withheld`` event, and the rollout's reason
    says what is missing and what to run). A version the registry does not know (a bundle
    given by digest) is a ``promotion_failed`` event, never an error. True when it moved."""
    alias = rollout.promote_alias
    cfg = merged_gates(rollout.gates)
    record: dict[str, Any] = {
        "alias": alias,
        "version": rollout.version,
        "verified": evidence.verified,
        "evidence": evidence.to_dict(),
        "override": override,
        "at": utcnow().isoformat(),
    }
    if not alias:
        rollout.promotion = {**record, "status": "none", "promoted": False, "detail": ""}
        return False
    if not (evidence.verified or cfg["promote_unverified"] or override):
        detail = (
            f"{alias} not moved: {evidence.why()}. Once the gates have data: "
            f"edgeloop rollout promote {rollout.id}; without it: "
            f"edgeloop rollout promote {rollout.id} --unverified --reason WHY"
        )
        rollout.promotion = {**record, "status": "withheld", "promoted": False, "detail": detail}
        rollout.reason = f"{rollout.reason}; {alias} not moved: no data for " + ", ".join(
            evidence.missing or evidence.failed
        )
        log_event(session, rollout, "promotion_withheld", detail, data=rollout.promotion)
        return False
    try:
        with session.begin_nested():
            registry.set_alias(
                session,
                model_name=rollout.model,
                alias=alias,
                version=int(rollout.version),
                rollout_id=rollout.id,
                verified=evidence.verified,
                evidence=evidence.to_dict(),
            )
    except (ValueError, NotFound, InvalidInput) as exc:
        detail = f"{alias}: {exc}"
        rollout.promotion = {**record, "status": "failed", "promoted": False, "detail": detail}
        log_event(session, rollout, "promotion_failed", detail, data={"alias": alias})
        return False
    status = "verified" if evidence.verified else "unverified"
    detail = f"{rollout.model}@{alias} -> version {rollout.version} ({status}"
    if not evidence.verified:
        why = f"override: {override}" if override else "promote_unverified is set"
        detail += f": {evidence.why()}; {why}"
    detail += ")"
    rollout.promotion = {**record, "status": status, "promoted": True, "detail": detail}
    log_event(
        session,
        rollout,
        "promoted",
        detail,
        data={"alias": alias, "version": rollout.version, "verified": evidence.verified},
    )
    return True


def promote_now(
    session: Session, *, rollout_id: str, unverified: bool = False, reason: str = "operator"
) -> Rollout:
    """An operator promotes a completed rollout whose promotion was withheld (or failed): the
    gates are evaluated again over its devices now; the alias moves when they verify it, or
    with ``unverified`` (recorded as an unverified promotion, ``reason`` as the override)."""
    rollout = get_rollout(session, rollout_id=rollout_id)
    if rollout.state != RolloutState.COMPLETED:
        raise Conflict(
            f"rollout {rollout_id} is {rollout.state}; only a completed rollout is promoted "
            "(every device it targets runs the version)"
        )
    alias = rollout.promote_alias
    if not alias:
        raise Conflict(
            f"rollout {rollout_id} has no promote_alias; move an alias by hand: "
            f"edgeloop model alias {rollout.model} ALIAS {rollout.version}"
        )
    if (rollout.promotion or {}).get("promoted"):
        raise Conflict(f"rollout {rollout_id} already moved {alias} to version {rollout.version}")
    finished = aware(rollout.finished_at)
    moved = [
        m
        for m in registry.alias_history(session, model_name=rollout.model)
        if m.alias == alias and finished is not None and (aware(m.at) or finished) > finished
    ]
    if moved:
        raise Conflict(
            f"{alias} was moved since this rollout ended (to version {moved[-1].to_version} at "
            f"{moved[-1].at:%Y-%m-%d %H:%M:%S}); promoting it now could move {alias} back. "
            f"Move it by hand if that is meant: edgeloop model alias {rollout.model} {alias} "
            f"{rollout.version}"
        )
    evidence = evidence_now(session, rollout)
    if not evidence.verified and not unverified:
        raise Conflict(
            f"{alias} not moved: {evidence.why()}. Wait for the data, or promote without it: "
            f"edgeloop rollout promote {rollout_id} --unverified --reason WHY"
        )
    override = "" if evidence.verified else (reason or "operator")
    log_event(session, rollout, "promote_requested", reason, data={"unverified": unverified})
    promote(session, rollout, evidence, override=override)
    if (rollout.promotion or {}).get("promoted"):
        status = rollout.promotion["status"]
        rollout.reason = (
            f"every phase passed its gates; {alias} -> version {rollout.version} "
            f"({status}, promoted by an operator)"
        )
    rollout.updated_at = utcnow()
    session.add(rollout)
    session.flush()
    return rollout
