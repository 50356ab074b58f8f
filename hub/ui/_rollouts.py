"""Rollout pages: the list, and one rollout's timeline, devices, gates and event log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlmodel import Session

from hub.core.clock import aware, utcnow
from hub.rollouts import service
from hub.rollouts.gates import Scope, evaluate
from hub.rollouts.views import rollout_view, summary
from hub.tables.rollouts import Rollout, RolloutState

log = logging.getLogger("edgeloop.ui")

# action -> (states it is offered in, confirmation question)
ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "pause": (
        frozenset({RolloutState.SHADOWING, RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL}),
        "Pause this rollout? No new commands go out until it is resumed.",
    ),
    "resume": (frozenset({RolloutState.PAUSED}), "Resume this rollout?"),
    "approve": (
        frozenset({RolloutState.AWAITING_APPROVAL}),
        "Approve the current phase and let the rollout go on?",
    ),
    "advance": (
        frozenset(service.ACTIVE),
        "Start the next phase now, without waiting for bake time or gates?",
    ),
    "rollback": (
        frozenset(service.ACTIVE | {RolloutState.COMPLETED, RolloutState.CANCELLED}),
        "Roll back every device of this rollout to its previous model?",
    ),
    # a completed rollout whose promotion was withheld for lack of evidence
    "promote": (
        frozenset({RolloutState.COMPLETED}),
        "Evaluate the gates again and move the alias if they now have the evidence?",
    ),
    "promote_unverified": (
        frozenset({RolloutState.COMPLETED}),
        "Move the alias to this version WITHOUT the gates' evidence? It is recorded as an "
        "unverified promotion.",
    ),
}


def rollouts_overview(session: Session) -> list[dict[str, Any]]:
    return [summary(r) for r in service.list_rollouts(session)]


def _live_gates(session: Session, rollout: Rollout) -> list[dict[str, Any]]:
    """The current phase's gates as they stand now (recorded results come when it ends)."""
    if rollout.state not in service.ACTIVE:
        return []
    rows = service.devices_of(session, rollout_id=rollout.id)
    mine = [d for d in rows if d.phase == rollout.phase]
    if not mine:
        return []
    since = aware(rollout.created_at) or utcnow()
    try:
        scope = Scope(rollout=rollout, devices=mine, since=since, now=utcnow())
        return [g.to_dict() for g in evaluate(session, scope, rollout.gates)]
    except Exception:  # a page must render even when one gate cannot be computed
        log.exception("rollout %s: live gate evaluation failed", rollout.id)
        return []


def available_actions(rollout: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    last_phase = rollout["phase"] >= len(rollout["phases"]) - 1
    for name, (states, question) in ACTIONS.items():
        if rollout["state"] not in states or (name == "advance" and last_phase):
            continue
        withheld = (rollout.get("promotion") or {}).get("status") == "withheld"
        if name.startswith("promote") and not withheld:
            continue
        out.append({"name": name, "confirm": question})
    return out


def rollout_detail(session: Session, *, rollout_id: str) -> dict[str, Any]:
    rollout = service.get_rollout(session, rollout_id=rollout_id)
    view = rollout_view(session, rollout, events=100)
    live = _live_gates(session, rollout)
    for phase in view["phases"]:
        phase["live"] = False
        if phase["index"] == rollout.phase and live and not phase["gates"]:
            phase["gates"], phase["live"] = live, True
    view["actions"] = available_actions(view)
    return view


def act(session: Session, *, rollout_id: str, action: str, reason: str) -> Rollout:
    """Run one operator action through the rollout service (Conflict when not allowed)."""
    operations: dict[str, Callable[..., Rollout]] = {
        "pause": service.pause,
        "resume": service.resume,
        "approve": service.approve,
        "advance": service.advance,
        "rollback": service.rollback,
        "promote": service.promote_now,
        "promote_unverified": partial(service.promote_now, unverified=True),
    }
    return operations[action](session, rollout_id=rollout_id, reason=reason)
