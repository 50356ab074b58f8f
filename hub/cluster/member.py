"""One replica's part in the cluster: its heartbeat, its leases, its share of monitoring.

:class:`ClusterMember` is a :class:`~hub.core.service.Periodic` ticking every third of the
lease period (``EDGELOOP_CLUSTER_LEASE_S``). Each tick, in order:

1. the replica's row gets a fresh heartbeat (inserted on the first tick);
2. each lease this replica wants is renewed, or taken when its row is missing, expired, or
   (PostgreSQL) its holder's database connection is gone;
3. the live replicas (heartbeat within one lease period) are read, for :meth:`owns`.

A lease is changed only by a compare-and-set ``UPDATE`` on (holder, term), so two replicas
never both take it, on SQLite and PostgreSQL alike. The holder counts a lease as its own
until ``lease_s`` after the *start* of the tick that renewed it (its monotonic clock), which
is never later than the expiry the others read: a holder that hangs stops counting itself
the holder before anyone else may take over. Clocks across hosts must agree to well within
a lease period (NTP).

On PostgreSQL the holder also keeps a session advisory lock on one dedicated connection
(``locked`` in the row says it does). When the holder dies (SIGKILL, a lost host) the
server drops the connection and its lock; a standby whose ``pg_try_advisory_lock`` then
succeeds takes the lease at its next tick, without waiting for the expiry. A hung holder
keeps its connection: then the expiry decides. SQLite (one machine) has no advisory locks:
there the expiry decides, except that a holder on the same host whose process is gone (a hub
restarted after a crash) is taken over at once; that holds on PostgreSQL too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from hub.core.clock import aware, utcnow
from hub.core.db import advisory_key, session_scope
from hub.core.errors import InvalidInput
from hub.core.service import Periodic, ServiceHealth
from hub.tables.cluster import ClusterLease, ClusterReplica

__all__ = [
    "COMPONENTS",
    "LEASES",
    "ClusterMember",
    "Lease",
    "new_replica_id",
    "parse_components",
    "rendezvous_owner",
]

log = logging.getLogger("edgeloop.cluster")

#: What ``hub serve --components`` can run, each in as many replicas as wanted.
COMPONENTS = ("api", "grpc", "ingest", "monitor", "controller", "triggers")
#: Singleton work -> the component whose replicas compete for its lease.
LEASES = {
    "rollouts": "controller",
    "key-rotation": "controller",
    "retention": "controller",
    "triggers": "triggers",
}
#: Replicas silent for this many lease periods are deleted (shown as not alive until then).
FORGET_AFTER_LEASES = 10


def parse_components(value: str | Iterable[str]) -> frozenset[str]:
    """``api,ingest`` (or ``all``) as a set of :data:`COMPONENTS`; anything else refused."""
    names = value.split(",") if isinstance(value, str) else list(value)
    wanted = {n.strip() for n in names if n.strip()}
    if not wanted or "all" in wanted:
        return frozenset(COMPONENTS)
    unknown = sorted(wanted - set(COMPONENTS))
    if unknown:
        raise InvalidInput(
            f"unknown component(s) {', '.join(unknown)}: choose from {', '.join(COMPONENTS)} "
            "(or all)"
        )
    return frozenset(wanted)


def new_replica_id() -> str:
    """``host-pid-xxxxxx``: unique per process start."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def rendezvous_owner(replicas: Iterable[str], key: str) -> str | None:
    """The replica owning ``key`` (highest random weight): stable while the set is, and a
    replica joining or leaving moves only the keys it takes or had."""

    def weight(replica: str) -> bytes:
        return hashlib.sha256(f"{replica}\0{key}".encode()).digest()

    return max(replicas, key=weight, default=None)


@dataclass
class _Held:
    term: int
    until: float  # monotonic: the holder stops counting the lease as its own then


class Lease:
    """A singleton's lease as seen by one replica (:class:`hub.core.service.Gate`)."""

    def __init__(self, member: ClusterMember, name: str) -> None:
        self._member, self.name = member, name

    def held(self) -> bool:
        return self._member.holds(self.name)


class ClusterMember(Periodic):
    """This replica's heartbeat, leases and view of the live replicas (a Service; start it
    before the services its leases gate, stop it after them)."""

    name = "cluster"

    def __init__(
        self,
        *,
        engine: Engine,
        components: Iterable[str],
        lease_s: float = 10.0,
        replica_id: str | None = None,
    ) -> None:
        super().__init__(
            interval_s=lease_s / 3,
            log=log,
            thread_name="edgeloop-cluster",
            fixed_rate=True,
            what="cluster heartbeat",
        )
        self.engine, self.lease_s = engine, lease_s
        self.components = sorted(set(components))
        self.replica_id = replica_id or new_replica_id()
        self._wanted: list[str] = []
        self._held: dict[str, _Held] = {}
        self._live: dict[str, list[str]] = {}  # component -> live replica ids
        self._mutex = threading.Lock()
        self._ticking = threading.Lock()
        self._pg = engine.dialect.name == "postgresql"
        self._conn: Connection | None = None  # PostgreSQL: holds the advisory locks
        self._locked: set[str] = set()
        self.takeovers = 0

    # what the rest of the hub asks --------------------------------------------------------

    def lease(self, name: str) -> Lease:
        """The lease ``name`` this replica competes for from its next tick."""
        if name not in self._wanted:
            self._wanted.append(name)
        return Lease(self, name)

    def holds(self, name: str) -> bool:
        held = self._held.get(name)
        return held is not None and time.monotonic() < held.until

    def owns(self, component: str, key: str) -> bool:
        """Whether this replica does the work ``key`` of ``component`` (rendezvous hashing
        over the live replicas running it; this one counts as live until it knows better)."""
        with self._mutex:
            live = set(self._live.get(component, ()))
        live.add(self.replica_id)
        return rendezvous_owner(sorted(live), key) == self.replica_id

    def health(self) -> ServiceHealth:
        with self._mutex:
            live = {c: list(ids) for c, ids in self._live.items()}
        return {
            **super().health(),
            "replica": self.replica_id,
            "components": self.components,
            "lease_s": self.lease_s,
            "leases": {name: self.holds(name) for name in self._wanted},
            "live": live,
            "takeovers": self.takeovers,
        }

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Register and try for the leases once before the thread starts, so a lone
        replica does its singleton work from its first second."""
        try:
            self.tick()
        except Exception:  # the database away at start: the thread keeps trying
            log.exception("cluster heartbeat failed")
        super().start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop ticking, hand the leases back (expired now: a standby takes them at its next
        tick) and remove this replica's row."""
        super().stop(timeout)
        held, self._held = list(self._held), {}
        try:
            with session_scope(self.engine) as s:
                now = utcnow()
                for name in held:
                    s.execute(
                        update(ClusterLease)
                        .where(
                            col(ClusterLease.name) == name,
                            col(ClusterLease.holder) == self.replica_id,
                        )
                        .values(expires_at=now, locked=False)
                    )
                s.execute(delete(ClusterReplica).where(col(ClusterReplica.id) == self.replica_id))
        except Exception:
            log.exception("handing the leases back failed (they expire on their own)")
        self._close_conn()

    # one tick -----------------------------------------------------------------------------

    def tick(self) -> None:
        with self._ticking:  # one tick at a time (the advisory connection is not shared)
            self._tick()

    def _tick(self) -> None:
        started = time.monotonic()
        self._heartbeat()
        for name in self._wanted:
            try:
                self._claim(name, started)
            except Exception:
                self._held.pop(name, None)
                log.exception("lease %s: renewing failed (not held until it succeeds)", name)
        self._read_live()

    def _heartbeat(self) -> None:
        now = utcnow()
        with session_scope(self.engine) as s:
            found = s.execute(
                update(ClusterReplica)
                .where(col(ClusterReplica.id) == self.replica_id)
                .values(heartbeat_at=now)
            )
            if found.rowcount == 0:  # type: ignore[attr-defined]  # a CursorResult
                s.add(
                    ClusterReplica(
                        id=self.replica_id,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        components=self.components,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )
            forget = now - timedelta(seconds=FORGET_AFTER_LEASES * self.lease_s)
            s.execute(delete(ClusterReplica).where(col(ClusterReplica.heartbeat_at) < forget))

    def _read_live(self) -> None:
        since = utcnow() - timedelta(seconds=self.lease_s)
        with Session(self.engine) as s:
            rows = s.exec(
                select(ClusterReplica.id, ClusterReplica.components).where(
                    col(ClusterReplica.heartbeat_at) >= since
                )
            ).all()
        live: dict[str, list[str]] = {}
        for replica, components in rows:
            for component in components or ():
                live.setdefault(str(component), []).append(replica)
        with self._mutex:
            self._live = {c: sorted(ids) for c, ids in live.items()}

    def _claim(self, name: str, started: float) -> None:
        """Renew or take the lease ``name``, or stand by."""
        now = utcnow()
        expires = now + timedelta(seconds=self.lease_s)
        with Session(self.engine) as s:
            row = s.get(ClusterLease, name)
        if row is None:
            locked = self._try_lock(name)
            try:
                with session_scope(self.engine) as s:
                    s.add(
                        ClusterLease(
                            name=name,
                            holder=self.replica_id,
                            term=1,
                            acquired_at=now,
                            renewed_at=now,
                            expires_at=expires,
                            locked=locked,
                        )
                    )
            except IntegrityError:  # another replica inserted it first
                self._unlock(name)
                self._held.pop(name, None)
                return
            self._won(name, 1, started)
            return
        mine = row.holder == self.replica_id
        expired = (aware(row.expires_at) or now) <= now
        if mine and not expired:
            locked = self._try_lock(name)
            if self._swap(row, now=now, expires=expires, term=row.term, locked=locked):
                self._held[name] = _Held(row.term, started + self.lease_s)
            else:
                self._lost(name)
            return
        # the holder is gone when its lease expired, its advisory lock is free (PostgreSQL),
        # or it ran on this host and its process is no more (a restarted single hub)
        gone = expired or (row.locked and self._try_lock(name)) or self._dead_here(row.holder)
        if not gone:
            self._lost(name)
            return
        locked = self._try_lock(name)
        term = row.term if mine else row.term + 1
        if self._swap(row, now=now, expires=expires, term=term, locked=locked, take=True):
            self._won(name, term, started, previous=None if mine else row.holder)
        else:
            self._lost(name)

    def _dead_here(self, holder: str) -> bool:
        """The holder's replica row names this host and a process that no longer exists."""
        with Session(self.engine) as s:
            replica = s.get(ClusterReplica, holder)
        if replica is None or replica.host != socket.gethostname() or replica.pid == os.getpid():
            return False
        try:
            os.kill(replica.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # it exists (another user's process)
            return False
        return False

    def _swap(
        self,
        row: ClusterLease,
        *,
        now: Any,
        expires: Any,
        term: int,
        locked: bool,
        take: bool = False,
    ) -> bool:
        """Compare-and-set on (holder, term) as read: True when this replica now holds it."""
        values: dict[str, Any] = {
            "holder": self.replica_id,
            "term": term,
            "renewed_at": now,
            "expires_at": expires,
            "locked": locked,
        }
        if take:
            values["acquired_at"] = now
        with session_scope(self.engine) as s:
            done = s.execute(
                update(ClusterLease)
                .where(
                    col(ClusterLease.name) == row.name,
                    col(ClusterLease.holder) == row.holder,
                    col(ClusterLease.term) == row.term,
                )
                .values(values)
            )
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]  # a CursorResult

    def _won(self, name: str, term: int, started: float, previous: str | None = None) -> None:
        if name not in self._held:
            self.takeovers += 1
            if previous is not None:
                log.info("lease %s: taken over from %s (term %d)", name, previous, term)
            else:
                log.info("lease %s: held (term %d)", name, term)
        self._held[name] = _Held(term, started + self.lease_s)

    def _lost(self, name: str) -> None:
        if self._held.pop(name, None) is not None:
            log.warning("lease %s: lost to another replica", name)
        self._unlock(name)

    # PostgreSQL advisory locks on one dedicated connection --------------------------------

    def _try_lock(self, name: str) -> bool:
        """Hold the advisory lock of ``name`` (kept until :meth:`_unlock` or the connection
        ends); False on SQLite, when another session holds it, or the connection broke."""
        if not self._pg:
            return False
        if name in self._locked:
            return True
        try:
            if self._conn is None:
                self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(f"lease:{name}")}
            ).scalar_one()
        except Exception as exc:
            log.warning("lease %s: advisory lock unavailable (%s)", name, type(exc).__name__)
            self._close_conn()
            return False
        if got:
            self._locked.add(name)
        return bool(got)

    def _unlock(self, name: str) -> None:
        if name not in self._locked or self._conn is None:
            return
        self._locked.discard(name)
        try:
            self._conn.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": advisory_key(f"lease:{name}")}
            )
        except Exception:
            self._close_conn()

    def _close_conn(self) -> None:
        """Close the advisory connection (its locks go with it). A lease whose lock went
        is no longer counted as held: a standby may take it as soon as the lock is free."""
        conn, self._conn = self._conn, None
        for name in self._locked:
            self._held.pop(name, None)
        self._locked.clear()
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:
                log.debug("closing the advisory connection failed", exc_info=True)
