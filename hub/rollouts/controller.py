"""The rollout controller: a reconcile loop over the database (see docs/ROLLOUTS.md).

Every tick, for each active rollout, in one transaction: move device rows forward from
their events, add devices that newly match the selector, then decide (start a phase,
choose its devices, stage commands, time devices out, evaluate gates, advance, pause or
roll back). Commands are *staged* (command id and ``issued_at`` stored) before anything is
published; after the commit every staged, unpublished command is published (QoS 1, PUBACK)
and marked published. A controller killed at any point republishes the same command with
the same id, which agents dedupe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import event, func
from sqlalchemy import select as select_columns
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.core.clock import aware, utcnow
from hub.core.db import session_scope
from hub.core.service import Periodic, ServiceHealth
from hub.fleet.commands import CommandPublisher, PublishError
from hub.rollouts import _progress, _rows, _shadow, _sync
from hub.rollouts._outbox import publish_staged
from hub.rollouts._progress import MAX_ROLLBACK_ATTEMPTS, NUDGE_GRACE_S, Slots, Tokens
from hub.rollouts._rows import Live, Member, Settled
from hub.rollouts._sync import IN_FLIGHT, REPORTED, BundleLinks, S
from hub.rollouts.events import log_event
from hub.rollouts.gates import (
    Scope,
    evaluate,
    install_failure_rate,
    merged_gates,
    promotion_evidence,
)
from hub.rollouts.service import promote
from hub.rpc.slots import SlotsSnapshot
from hub.tables import DeploymentEventRow
from hub.tables.rollouts import Rollout, RolloutEvent, RolloutShadow, RolloutState
from proto.topics import Topics

log = logging.getLogger("edgeloop.rollouts")
R = RolloutState
RECONCILED = {R.SHADOWING, R.RUNNING, R.AWAITING_APPROVAL, R.PAUSED, R.ROLLING_BACK}
__all__ = [
    "MAX_ROLLBACK_ATTEMPTS",
    "NUDGE_GRACE_S",
    "RECONCILED",
    "BundleLinks",
    "RolloutController",
]
#: A tick slower than this is logged (the controller lagging behind device events).
SLOW_TICK_S = 5.0
#: How long a tick reuses the devices matching a rollout's selector (and their online
#: flags) before reading them again: reading and matching every device every tick was the
#: largest part of a tick. A phase starting and the shadow phase read them fresh.
MEMBERS_REFRESH_S = 1.0
#: A rollout whose tick staged no command still has its outbox read this often (commands
#: staged by an earlier controller, or marked published by none: a crash in between).
OUTBOX_CHECK_S = 1.0
#: A running rollout whose last reconcile changed nothing (no row written, no command
#: staged or held back by the command rate) is reconciled again only when something it
#: reads may have moved: a new device event, a new rollout event (every operator action
#: logs one) or its row changed; else at least this often (time-driven steps: device
#: timeouts, bake time, nudges, devices newly matching), or every 10 ticks if sooner.
QUIET_RECHECK_S = 1.0
_WRITES = ("INSERT", "UPDATE", "DELETE")


class RolloutController(Periodic):
    """Drives every active rollout; ``start()``/``stop()`` run :meth:`tick` on a thread (a
    Service)."""

    name = "rollouts"

    def __init__(
        self,
        *,
        engine: Engine,
        mqtt_url: str,
        artifact_endpoint: str,
        fleet: str = "default",
        topic_prefix: str = "edgeloop/v1",
        tick_s: float = 0.5,
        max_commands_per_s: float = 50.0,
        max_concurrent_downloads: int = 100,
        publisher: CommandPublisher | None = None,
        capacity: Callable[[], SlotsSnapshot | None] | None = None,
        bundle_links: BundleLinks | None = None,
    ) -> None:
        self.engine, self.endpoint, self.tick_s = engine, artifact_endpoint, tick_s
        #: presigned download URLs for deploy and shadow commands (``hub serve`` with
        #: ``EDGELOOP_ARTIFACT_PRESIGN``): devices fetch from the object store, gRPC the fallback
        self.bundle_links = bundle_links
        self.max_commands_per_s = max_commands_per_s
        self.max_concurrent_downloads = max_concurrent_downloads
        #: the artifact server's download slots (``GrpcService.capacity`` in-process,
        #: ``hub.rpc.slots.CapacityClient`` over gRPC): new deploys go only into free ones
        self.capacity = capacity
        self.last_slots: SlotsSnapshot | None = None
        # e.g. the database briefly unavailable: logged, and the next tick retries
        super().__init__(
            interval_s=tick_s,
            log=log,
            thread_name="rollout-controller",
            slow_s=SLOW_TICK_S,
            what="rollout controller tick",
        )
        self.publisher = publisher or CommandPublisher(
            mqtt_url=mqtt_url, topics=Topics(prefix=topic_prefix, fleet=fleet)
        )
        self._tokens = Tokens.full(max_commands_per_s)
        self.published = 0
        self.cpu_s = 0.0
        self._members: dict[str, tuple[float, dict[str, Member]]] = {}
        self._outbox_read: dict[str, float] = {}  # rollout id -> when its outbox was read
        self._reconcile_errors = 0
        #: rollout id -> (what it read looked like, when last reconciled) after a reconcile
        #: that changed nothing (:data:`QUIET_RECHECK_S`)
        self._quiet: dict[str, tuple[tuple[object, ...], float]] = {}
        self._throttled = False  # the last _drive held a device back by the command rate
        self.skipped = 0  # reconciles skipped: nothing new since one that changed nothing
        self._writes = 0  # SQL writes of this controller's thread (see _count_writes)
        self._thread_id: int | None = None
        self._listening = False

    # lifecycle ----------------------------------------------------------------------------

    @property
    def errors(self) -> int:
        """Failed ticks plus failed reconciles of one rollout (each retried)."""
        return self.failures + self._reconcile_errors

    def start(self) -> None:
        self.publisher.start()
        super().start()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.publisher.stop()
        if self._listening:
            event.remove(self.engine, "before_cursor_execute", self._count_writes)
            self._listening = False

    def _count_writes(self, _conn: object, _cursor: object, statement: str, *_: object) -> None:
        """Count the SQL writes the controller's own thread executes (other threads share
        the engine): a reconcile that wrote nothing changed nothing."""
        if threading.get_ident() == self._thread_id and statement.lstrip()[:6] in _WRITES:
            self._writes += 1

    def health(self) -> ServiceHealth:
        slots = self.last_slots
        return {
            **super().health(),
            "commands_published": self.published,
            "tick_cpu_s": round(self.cpu_s, 3),
            "reconciles_skipped": self.skipped,
            "download_slots": slots.to_dict() if slots is not None else None,
        }

    def __enter__(self) -> RolloutController:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # one pass -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Reconcile every active rollout once; one bad rollout never stops the others.
        Its CPU time adds up in :attr:`cpu_s` (the controller's own cost, in ``health``)."""
        started = time.thread_time()
        try:
            self._tick()
        finally:
            self.cpu_s += time.thread_time() - started

    def _tick(self) -> None:
        self._thread_id = threading.get_ident()
        if not self._listening:
            event.listen(self.engine, "before_cursor_execute", self._count_writes)
            self._listening = True
        with Session(self.engine) as session:
            active = session.execute(
                select_columns(
                    col(Rollout.id),
                    col(Rollout.state),
                    col(Rollout.phase),
                    col(Rollout.approved_phase),
                    col(Rollout.updated_at),
                    col(Rollout.shadow),
                )
                .where(col(Rollout.state).in_([s.value for s in RECONCILED]))
                .order_by(col(Rollout.created_at))
            ).all()
            ids = [a[0] for a in active]
            marks = self._marks(session, active)
            # shadow stops of rollouts that ended (not reconciled): publish, follow the answers
            stops = session.exec(
                select(RolloutShadow.rollout_id)
                .where(
                    RolloutShadow.stop_command_id != "",
                    col(RolloutShadow.state).not_in([s.value for s in _shadow.SETTLED]),
                )
                .distinct()
            ).all()
        slots: Slots | None = None  # read once, by the first rollout reconciled
        for gone in set(self._members) - set(ids):
            del self._members[gone]
        for rollout_id in [*ids, *sorted(set(stops) - set(ids))]:
            staged = True
            try:
                mark = marks.get(rollout_id)
                if mark is not None and self._still_quiet(rollout_id, mark):
                    self.skipped += 1
                    staged = False
                else:
                    writes, self._throttled = self._writes, False
                    with session_scope(self.engine) as session:
                        if rollout_id in ids:
                            slots = self._slots() if slots is None else slots
                            staged = self._reconcile(session, rollout_id, slots)
                        elif (ended := session.get(Rollout, rollout_id)) is not None:
                            _shadow.sync(session, ended)
                    quiet = not staged and not self._throttled and self._writes == writes
                    if mark is not None and quiet:
                        self._quiet[rollout_id] = (mark, time.monotonic())
                    else:
                        self._quiet.pop(rollout_id, None)
                read = self._outbox_read.get(rollout_id, 0.0)
                if staged or time.monotonic() - read >= OUTBOX_CHECK_S:
                    self._outbox_read[rollout_id] = time.monotonic()
                    self._publish(rollout_id)
            except PublishError as exc:
                self._outbox_read.pop(rollout_id, None)  # the next tick tries again
                self._quiet.pop(rollout_id, None)
                log.warning("rollout %s: commands wait for the broker: %s", rollout_id, exc)
            except Exception:
                self._quiet.pop(rollout_id, None)
                self._reconcile_errors += 1
                log.exception("rollout %s: reconcile failed (will retry)", rollout_id)
        for gone in set(self._outbox_read) - set(ids) - set(stops):
            del self._outbox_read[gone]
        for gone in set(self._quiet) - set(ids):
            del self._quiet[gone]

    def _marks(
        self, session: Session, active: Sequence[tuple[Any, ...]]
    ) -> dict[str, tuple[object, ...]]:
        """For each running rollout without a shadow phase, what a reconcile reads that can
        move without time passing: its row, its newest rollout event, the newest device
        event (two index lookups for all, not a read of the rollout's rows)."""
        running = [a for a in active if a[1] == R.RUNNING and not a[5]]
        if not running:
            return {}
        newest_event = session.exec(select(func.max(DeploymentEventRow.id))).one()
        logged = dict(
            session.exec(
                select(RolloutEvent.rollout_id, func.max(RolloutEvent.id))
                .where(col(RolloutEvent.rollout_id).in_([a[0] for a in running]))
                .group_by(col(RolloutEvent.rollout_id))
            ).all()
        )
        return {str(a[0]): (*a, logged.get(a[0]), newest_event) for a in running}

    def _still_quiet(self, rollout_id: str, mark: tuple[object, ...]) -> bool:
        """True when the rollout's last reconcile changed nothing, nothing it reads has moved
        since, and it was reconciled less than :data:`QUIET_RECHECK_S` ago."""
        quiet = self._quiet.get(rollout_id)
        recheck = min(QUIET_RECHECK_S, 10 * self.tick_s)
        return quiet is not None and quiet[0] == mark and time.monotonic() - quiet[1] < recheck

    def _slots(self) -> Slots:
        """The artifact server's free download slots now (unknown without a source, or when
        it does not answer: then only ``max_concurrent_downloads`` limits)."""
        if self.capacity is None:
            return Slots()
        try:
            now = self.capacity()
        except Exception as exc:  # e.g. the artifact server restarting: the fixed limit
            log.warning("download slots unknown this tick: %s", exc)
            now = None
        self.last_slots = now
        return Slots() if now is None else Slots(free=now.capacity - now.in_flight)

    def _reconcile(self, session: Session, rollout_id: str, slots: Slots) -> bool:
        """One rollout's step; False only when it surely staged no command (then the
        outbox need not be read this tick)."""
        rollout = session.exec(
            select(Rollout).where(Rollout.id == rollout_id).with_for_update()
        ).one()
        # only the rows a tick can change are read in full (plain columns, written back as
        # one batched UPDATE of what changed); settled ones are the columns the gates read
        rows, waiting, settled = _rows.live_rows(session, rollout_id)
        _sync.sync_events(session, rollout, rows)
        _progress.time_out(session, rollout, rows)
        moved = _rows.save(session, rows)
        if (moved or session.dirty or session.new) and not self._commit_progress(session, rollout):
            return True
        if rollout.shadow and not _shadow.pending(rollout):
            _shadow.sync(session, rollout)  # the answers to the stops
        if rollout.state == R.ROLLING_BACK:
            _progress.roll_back(session, rollout, _rows.all_rows(session, rollout_id))
            return True
        devices = self._matching(session, rollout)
        known = {d.device_id for d in rows} | {d.device_id for d in [*waiting, *settled]}
        rows += _sync.add_members(session, rollout, known, list(devices.values()))
        if rollout.state == R.PAUSED:
            return True
        if _shadow.pending(rollout):
            _shadow.drive(session, rollout, devices)
            return True
        self._drive(session, rollout, rows, waiting, settled, devices, slots)
        _rows.save(session, rows)
        return bool(rollout.shadow) or any(
            (d.command_id and d.published_at is None)
            or (d.rollback_command_id and d.rollback_published_at is None)
            for d in rows
        )

    def _matching(self, session: Session, rollout: Rollout) -> dict[str, Member]:
        """The devices matching the rollout's selector, read at most every
        :data:`MEMBERS_REFRESH_S` (fresh when a phase is about to start, and while the
        shadow phase runs)."""
        now = time.monotonic()
        cached = self._members.get(rollout.id)
        fresh = rollout.phase_started_at is None or _shadow.pending(rollout)
        if cached is not None and not fresh and now - cached[0] < MEMBERS_REFRESH_S:
            return cached[1]
        devices = {d.id: d for d in _rows.matching_devices(session, rollout)}
        self._members[rollout.id] = (now, devices)
        return devices

    def _commit_progress(self, session: Session, rollout: Rollout) -> bool:
        """Commit the device rows moved by their events before the slower part of the tick
        (gates over telemetry): readers and the ingest see them at once, and SQLite's write
        lock is not held while the gates read. Then lock the rollout row again (PostgreSQL)
        and go on only while it is still reconciled (an operator may have ended it)."""
        session.commit()
        session.refresh(rollout, with_for_update=True)
        return rollout.state in RECONCILED

    # running ------------------------------------------------------------------------------

    def _drive(
        self,
        session: Session,
        rollout: Rollout,
        rows: list[Live],
        waiting: list[Settled],
        settled: list[Settled],
        devices: dict[str, Member],
        slots: Slots,
    ) -> None:
        phase = rollout.phase
        if rollout.phases[phase].get("approval") and rollout.approved_phase < phase:
            if rollout.state != R.AWAITING_APPROVAL:
                rollout.state, rollout.reason = R.AWAITING_APPROVAL, f"phase {phase} needs approval"
                log_event(session, rollout, "awaiting_approval", rollout.reason)
                session.add(rollout)
            return
        if rollout.phase_started_at is None:  # load the unassigned rows: a phase takes some
            unassigned = {w.device_id for w in waiting if w.phase < 0}
            rows += _rows.load(session, rollout.id, unassigned)
            waiting = [w for w in waiting if w.device_id not in unassigned]
            _progress.start_phase(session, rollout, rows, [*waiting, *settled], devices)
        _progress.nudge(session, rows, devices)
        self._throttled = _progress.stage(
            session,
            rollout,
            rows,
            waiting,
            devices,
            tokens=self._tokens,
            max_commands_per_s=self.max_commands_per_s,
            max_concurrent_downloads=self.max_concurrent_downloads,
            tick_s=self.tick_s,
            slots=slots,
        )
        loaded = {d.device_id for d in rows}  # as they are now; the rest as read
        every: list[Live | Settled] = [*rows, *(w for w in waiting if w.device_id not in loaded)]
        mine = [d for d in [*every, *settled] if 0 <= d.phase <= phase]
        if rollout.phase_commanded_at is None and not any(
            d.state == S.PENDING or (d.command_id and d.published_at is None) for d in mine
        ):
            rollout.phase_commanded_at = utcnow()
            session.add(rollout)
        self._decide(session, rollout, mine)

    def _decide(self, session: Session, rollout: Rollout, mine: list[Live | Settled]) -> None:
        cfg = merged_gates(rollout.gates)
        reported = sum(d.state in REPORTED for d in mine)
        early = install_failure_rate(mine, cfg)
        if not early.passed and reported >= rollout.min_reporting:
            self._gates_failed(session, rollout, [early.to_dict()], early_fail=True)
            return
        commanded_at = aware(rollout.phase_commanded_at)
        if commanded_at is None or any(d.state in IN_FLIGHT or d.state == S.PENDING for d in mine):
            return
        if utcnow() - commanded_at < timedelta(seconds=rollout.bake_s):
            return
        need = min(rollout.min_reporting, len(mine))
        if reported < need:
            rollout.state = R.PAUSED
            rollout.reason = f"insufficient data: {reported} of {len(mine)} devices reported"
            rollout.reason += f" (min_reporting {rollout.min_reporting})"
            session.add(rollout)
            log_event(session, rollout, "paused", rollout.reason)
            return
        since = aware(rollout.created_at) or utcnow()
        scope = Scope(rollout=rollout, devices=mine, since=since, now=utcnow())
        results = evaluate(session, scope, cfg)
        gates = [g.to_dict() for g in results]
        if not all(g.passed for g in results):
            self._gates_failed(session, rollout, gates, early_fail=False)
            return
        self._record(rollout, state="passed", gates=gates)
        log_event(session, rollout, "phase_passed", f"phase {rollout.phase}", data={"gates": gates})
        if rollout.phase >= len(rollout.phases) - 1:
            rollout.state, rollout.finished_at = R.COMPLETED, utcnow()
            rollout.reason = "every phase passed its gates"
            log_event(session, rollout, "completed", rollout.reason)
            promote(session, rollout, promotion_evidence(session, scope, cfg, results))
        else:
            rollout.phase += 1
            rollout.phase_started_at = rollout.phase_commanded_at = None
        rollout.updated_at = utcnow()
        session.add(rollout)

    def _record(self, rollout: Rollout, *, state: str, gates: list[dict[str, object]]) -> None:
        results = dict(rollout.phase_results)
        results[str(rollout.phase)] = {"state": state, "gates": gates, "at": utcnow().isoformat()}
        rollout.phase_results = results

    def _gates_failed(
        self,
        session: Session,
        rollout: Rollout,
        gates: list[dict[str, object]],
        *,
        early_fail: bool,
    ) -> None:
        failed = [str(g["name"]) for g in gates if not g["passed"]]
        self._record(rollout, state="failed", gates=gates)
        rollout.reason = f"phase {rollout.phase} failed gates: {', '.join(failed)}"
        if early_fail:
            rollout.reason += " (before bake time ended)"
        rollout.state = R.PAUSED if rollout.on_failure == "pause" else R.ROLLING_BACK
        rollout.updated_at = utcnow()
        session.add(rollout)
        log_event(session, rollout, "gates_failed", rollout.reason, data={"gates": gates})

    # publishing ---------------------------------------------------------------------------

    def _publish(self, rollout_id: str) -> None:
        """Publish staged commands (shadow starts and stops, then deploys, then rollbacks),
        then mark them published (``_outbox``)."""
        self.published += publish_staged(
            self.engine,
            rollout_id,
            publisher=self.publisher,
            endpoint=self.endpoint,
            links=self.bundle_links,
        )
