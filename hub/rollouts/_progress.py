"""Per-tick device progress for the controller: time devices out, choose a phase's devices,
stage their commands (rate limits apply), republish to devices that came back, and roll
back. The gate decisions stay in :mod:`hub.rollouts.controller`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlmodel import Session

from hub.core.clock import aware, utcnow
from hub.rollouts import _sync
from hub.rollouts._rows import Live, Member, Settled, load, seen_after_publish, states_of
from hub.rollouts._sync import DOWNLOADING, IN_FLIGHT, S
from hub.rollouts.events import log_device_events, log_event
from hub.rollouts.phases import Candidate, choose, parse_phases, site_of
from hub.tables.devices import STATE_RECEIVED_KEY
from hub.tables.rollouts import Rollout, RolloutDevice, RolloutState

R = RolloutState
#: Commanded devices that have not started their download (they will need a slot).
NOT_STREAMING = frozenset({S.COMMANDED, S.RECEIVED})
MAX_ROLLBACK_ATTEMPTS = 3
#: A device seen (any message) this long after its command was published, without having
#: answered it, gets the command again even when its state does not show a reconnect.
NUDGE_GRACE_S = 30.0


@dataclass
class Tokens:
    """The controller-wide command rate limit: a token bucket (``rate`` per s, as many
    at most)."""

    tokens: float
    refilled: float = field(default_factory=time.monotonic)

    @classmethod
    def full(cls, rate: float) -> Tokens:
        return cls(tokens=max(rate, 1.0))

    def refill(self, rate: float) -> None:
        t = time.monotonic()
        self.tokens = min(max(rate, 1.0), self.tokens + (t - self.refilled) * rate)
        self.refilled = t


@dataclass
class Slots:
    """The artifact server's download slots left for this tick's new commands, shared by
    every rollout the tick drives (``None``: the server's capacity is not known; only the
    fixed ``max_concurrent_downloads`` applies).

    Starts at the server's capacity less its streams in flight; each rollout takes off
    its devices commanded but not yet streaming (they will need a slot; one that already
    streams but whose event has not arrived counts twice: admission errs on the safe side),
    then the devices it commands."""

    free: int | None = None


def time_out(session: Session, rollout: Rollout, rows: Sequence[Live]) -> None:
    limit = utcnow() - timedelta(seconds=rollout.device_timeout_s)
    logged: list[tuple[str, str, str]] = []
    for d in rows:
        at = aware(d.commanded_at)
        if d.state in IN_FLIGHT and d.published_at is not None and at and at < limit:
            d.state, d.reason = (
                S.TIMED_OUT,
                f"no final answer in {rollout.device_timeout_s:g} s",
            )
            logged.append(("device_timed_out", d.reason, d.device_id))
    log_device_events(session, rollout, logged)


def start_phase(
    session: Session,
    rollout: Rollout,
    rows: list[Live],
    others: Sequence[Settled],
    devices: dict[str, Member],
) -> None:
    """Choose the current phase's devices among the unassigned rows (``rows``: every
    unassigned row, loaded; ``others``: the rest, as columns)."""
    phase, last = rollout.phase, len(rollout.phases) - 1
    spec = parse_phases([p["spec"] for p in rollout.phases])[phase]
    pool = [
        Candidate(
            device_id=d.device_id,
            site=site_of(devices[d.device_id].group, devices[d.device_id].tags),
            online=devices[d.device_id].online,
        )
        for d in rows
        if d.phase == -1 and d.device_id in devices
    ]
    every: list[Live | Settled] = [*rows, *others]
    assigned = sum(0 <= d.phase <= phase for d in every)
    total = sum(d.device_id in devices or d.phase >= 0 for d in every)
    chosen = set(
        choose(rollout_id=rollout.id, spec=spec, total=total, assigned=assigned, pool=pool)
    )
    for d in rows:
        if d.phase == -1 and (d.device_id in chosen or phase == last):
            d.phase = phase
    rollout.phase_started_at, rollout.state = utcnow(), R.RUNNING
    rollout.reason = f"phase {phase} started"
    rollout.updated_at = utcnow()
    session.add(rollout)
    log_event(session, rollout, "phase_started", f"phase {phase} ({spec}): {len(chosen)} new")


def nudge(session: Session, rows: Sequence[Live], devices: dict[str, Member]) -> None:
    """A device that came online after its command was published but never answered
    (it had no broker session yet, so nothing was queued for it): publish the same
    command again (same id; agents dedupe).

    "Came online after": seen after the publish, and its retained state (sent when it
    connects, after it subscribed) reached the hub after the command was issued, by the
    hub's clock (``STATE_RECEIVED_KEY``; the device's own ``updatedAt`` only for a state
    stored before the hub recorded that, as it may be hours off). A device that is merely
    busy keeps sending telemetry before it gets to the command; it is not nudged until
    :data:`NUDGE_GRACE_S` after the publish. Only those within the grace have their state
    read."""
    grace = timedelta(seconds=NUDGE_GRACE_S)
    waiting = [
        d
        for d in rows
        if d.state == S.COMMANDED
        and d.published_at is not None
        and (device := devices.get(d.device_id)) is not None
        and device.online
    ]
    seen_at = seen_after_publish(session, waiting[0].rollout_id) if waiting else {}
    found: list[tuple[Live, bool]] = []  # (row, seen within the grace)
    for d in waiting:
        published, seen = aware(d.published_at), aware(seen_at.get(d.device_id))
        if published is None or seen is None or seen <= published:
            continue
        found.append((d, seen <= published + grace))
    recent = [d.device_id for d, within in found if within]
    states = states_of(session, recent) if recent else {}
    for d, within in found:
        if not within or _state_ms(states.get(d.device_id, {})) >= d.issued_at_ms:
            d.published_at = None


def stage(
    session: Session,
    rollout: Rollout,
    rows: list[Live],
    waiting: Sequence[Settled],
    devices: dict[str, Member],
    *,
    tokens: Tokens,
    max_commands_per_s: float,
    max_concurrent_downloads: int,
    tick_s: float,
    slots: Slots | None = None,
) -> bool:
    """Give pending devices of started phases a command id (rate limits apply; new
    downloads only into the artifact server's free ``slots``). ``waiting``: pending rows
    not loaded; the ones this changes are loaded and appended to ``rows``. True when a
    device was held back by the command rate (it may go out with time alone, no event)."""
    tokens.refill(max_commands_per_s)
    limit = min(
        rollout.max_concurrent_downloads or max_concurrent_downloads, max_concurrent_downloads
    )
    rate_cap = rollout.max_commands_per_s
    busy = sum(d.state in DOWNLOADING for d in rows)
    if slots is not None and slots.free is not None:
        slots.free -= sum(d.state in NOT_STREAMING for d in rows)
        limit = min(limit, busy + max(slots.free, 0))
    loaded = {d.device_id for d in rows}
    candidates: list[Live | Settled] = [d for d in rows if d.state == S.PENDING]
    candidates += [w for w in waiting if w.state == S.PENDING and w.device_id not in loaded]
    staging: list[Live | Settled] = []
    skipped: list[Live | Settled] = []
    throttled = False
    for d in sorted(candidates, key=lambda r: (r.phase, r.device_id)):
        if not 0 <= d.phase <= rollout.phase:
            continue
        if d.device_id not in devices:
            skipped.append(d)
            continue
        if busy >= limit:
            break
        if tokens.tokens < 1 or (
            rate_cap is not None and len(staging) >= max(1, int(rate_cap * tick_s))
        ):
            throttled = True
            break
        staging.append(d)
        tokens.tokens -= 1
        busy += 1
    if slots is not None and slots.free is not None:
        slots.free -= len(staging)
    fetched = {
        r.device_id: r
        for r in load(
            session,
            rollout.id,
            [d.device_id for d in [*staging, *skipped] if d.device_id not in loaded],
        )
    }
    rows.extend(fetched.values())

    def live(d: Live | Settled) -> Live | None:
        return d if isinstance(d, Live) else fetched.get(d.device_id)

    for d in skipped:
        if (row := live(d)) is not None and row.state == S.PENDING:
            row.state, row.reason = S.SKIPPED, "no longer matches the selector or was removed"
    chosen = [row for d in staging if (row := live(d)) is not None and row.state == S.PENDING]
    states = states_of(session, [d.device_id for d in chosen]) if chosen else {}
    for d in chosen:
        model, version, digest = _sync.active_slot(states.get(d.device_id, {}))
        d.previous_model, d.previous_version, d.previous_digest = model, version, digest
        d.command_id, d.issued_at_ms = uuid.uuid4().hex, _sync.ms(utcnow())
        d.commanded_at, d.state, d.attempts = utcnow(), S.COMMANDED, d.attempts + 1
        d.updated_at = utcnow()
    return throttled


def roll_back(session: Session, rollout: Rollout, rows: Sequence[RolloutDevice]) -> None:
    """Send rollbacks to every device that may serve the candidate; once all answered (or
    gave up), the rollout is rolled back. ``rows``: every row of the rollout."""
    waiting = False
    for d in rows:
        if d.state == S.PENDING:
            d.state, d.reason = S.SKIPPED, "rollout rolled back before this device's phase"
        elif d.state in IN_FLIGHT - {S.ACTIVATED}:
            waiting = True  # let the deploy finish (or time out) first: a failed one needs
            continue  # no rollback, and the rollback must come after the deploy
        elif d.state in {S.ACTIVATED, S.HEALTHY, S.TIMED_OUT} or (
            d.state == S.ROLLBACK_FAILED and d.rollback_attempts < MAX_ROLLBACK_ATTEMPTS
        ):
            d.rollback_command_id = uuid.uuid4().hex
            d.rollback_issued_at_ms, d.rollback_published_at = _sync.ms(utcnow()), None
            d.rollback_attempts += 1
            d.state = S.ROLLING_BACK
        elif d.state == S.ROLLING_BACK:
            waiting = True
            continue
        else:
            continue
        d.updated_at = utcnow()
        session.add(d)
        waiting = waiting or d.state == S.ROLLING_BACK
    if waiting:
        return
    stuck = [d.device_id for d in rows if d.state == S.ROLLBACK_FAILED]
    rollout.state, rollout.finished_at, rollout.updated_at = R.ROLLED_BACK, utcnow(), utcnow()
    if stuck:
        rollout.reason += f"; rollback failed on {len(stuck)} device(s): {', '.join(stuck[:10])}"
    log_event(session, rollout, "rolled_back", rollout.reason, data={"failed": stuck})
    session.add(rollout)


def _state_ms(state: dict[str, object]) -> int:
    """When a stored ``AgentState`` reached the hub (hub clock, unix ms); for one stored
    before the hub recorded that, the device clock's ``updated_at`` (0: none)."""
    value = state.get(STATE_RECEIVED_KEY, state.get("updatedAt", state.get("updated_at", 0)))
    try:
        return int(value)  # type: ignore[call-overload]  # protobuf JSON: int64 as a string
    except (TypeError, ValueError):
        return 0
