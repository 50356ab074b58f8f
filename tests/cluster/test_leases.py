"""Leases and membership among hub replicas (``hub.cluster.member``) on SQLite and
PostgreSQL, in one process: one holder at a time, takeover after the holder stops renewing
(expiry) or, on PostgreSQL, as soon as its connection is gone; rendezvous ownership."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from edgeloop_cli import main
from hub.cluster.member import ClusterMember, parse_components, rendezvous_owner
from hub.cluster.status import cluster_status
from hub.core.clock import utcnow
from hub.core.db import make_engine, session_scope
from hub.core.errors import InvalidInput
from hub.tables import ClusterLease, ClusterReplica, create_all

LEASE_S = 1.5


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url)
    create_all(made)
    try:
        yield made
    finally:
        made.dispose()


def _member(engine: Engine, name: str) -> ClusterMember:
    member = ClusterMember(
        engine=engine, components=["controller", "monitor"], lease_s=LEASE_S, replica_id=name
    )
    member.lease("rollouts")
    return member


def _until(condition: object, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not within {within} s")


def test_one_holder_then_takeover_when_it_stops_renewing(engine: Engine) -> None:
    a, b = _member(engine, "a"), _member(engine, "b")
    a.start()
    b.start()
    try:
        assert a.holds("rollouts") and not b.holds("rollouts")
        for _ in range(10):  # renewals keep it where it is
            time.sleep(LEASE_S / 10)
            assert a.holds("rollouts") != b.holds("rollouts")
        assert a.holds("rollouts")
        status = cluster_status(engine, lease_s=LEASE_S)
        assert {r["id"] for r in status["replicas"] if r["alive"]} == {"a", "b"}
        assert status["components"]["controller"] == ["a", "b"]
        (lease,) = status["leases"]
        assert (lease["holder"], lease["term"], lease["valid"]) == ("a", 1, True)

        # a hangs: its thread stops ticking, its database connection (PostgreSQL) stays
        _hang(a)
        taken = _until(lambda: b.holds("rollouts"), within=3 * LEASE_S)
        assert not a.holds("rollouts")  # a stopped counting itself the holder first
        print(f"takeover after a hang: {taken:.2f} s (lease {LEASE_S:g} s)")
        assert taken <= LEASE_S + LEASE_S / 3 + 0.5, taken
        (lease,) = cluster_status(engine, lease_s=LEASE_S)["leases"]
        assert (lease["holder"], lease["term"]) == ("b", 2)
    finally:
        b.stop()
        a.stop()


def _hang(member: ClusterMember) -> None:
    """The member stops ticking (the base class's stop: no handover, connections kept)."""
    super(ClusterMember, member).stop()


def test_a_graceful_stop_hands_the_lease_over_at_once(engine: Engine) -> None:
    a, b = _member(engine, "a"), _member(engine, "b")
    a.start()
    b.start()
    try:
        assert a.holds("rollouts")
        a.stop()
        took = _until(lambda: b.holds("rollouts"), within=2 * LEASE_S)
        print(f"handover after a clean stop: {took:.2f} s (lease {LEASE_S:g} s)")
        assert took <= LEASE_S / 3 + 0.5, took
        assert [r["id"] for r in cluster_status(engine, lease_s=LEASE_S)["replicas"]] == ["b"]
    finally:
        b.stop()


def test_postgres_takeover_when_the_holders_connection_dies(postgres_url: str) -> None:
    """The holder's connection closed (what SIGKILL does): the standby takes the lease at
    its next tick, long before the expiry."""
    engine = make_engine(postgres_url)
    create_all(engine)
    a, b = _member(engine, "pa"), _member(engine, "pb")
    try:
        a.start()
        b.start()
        assert a.holds("rollouts")
        _hang(a)
        assert a._conn is not None
        a._conn.invalidate()  # the server drops its session and advisory lock
        took = _until(lambda: b.holds("rollouts"), within=3 * LEASE_S)
        print(f"takeover after the holder's connection died: {took:.2f} s (lease {LEASE_S:g} s)")
        assert took < LEASE_S * 0.9, took
    finally:
        b.stop()
        a.stop()
        engine.dispose()


def test_components_and_rendezvous_ownership() -> None:
    assert parse_components("all") == parse_components("")
    assert parse_components("api, ingest") == {"api", "ingest"}
    with pytest.raises(InvalidInput):
        parse_components("api,nope")
    keys = [f"digits@{v}" for v in range(200)]
    two = {k: rendezvous_owner(["r1", "r2"], k) for k in keys}
    assert 60 < sum(o == "r1" for o in two.values()) < 140
    three = {k: rendezvous_owner(["r1", "r2", "r3"], k) for k in keys}
    # a replica joining takes keys only for itself: nothing moves between r1 and r2
    assert all(three[k] in (two[k], "r3") for k in keys)


def test_a_holder_whose_process_is_gone_on_this_host_is_taken_over_at_once(
    engine: Engine,
) -> None:
    """A single hub SIGKILLed and started again (new replica id) leads from its start."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    a = _member(engine, "a")
    a.start()
    a.stop()  # its lease and row, as a SIGKILLed process leaves them:
    with session_scope(engine) as s:
        s.add(ClusterReplica(id="a", host=socket.gethostname(), pid=dead.pid, components=[]))
        lease = s.get(ClusterLease, "rollouts")
        assert lease is not None
        lease.expires_at = utcnow() + timedelta(seconds=60)
        s.add(lease)
    b = _member(engine, "b")
    b.start()
    try:
        assert b.holds("rollouts")
    finally:
        b.stop()


def test_cluster_status_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    member = _member(engine, "cli-1")
    member.start()
    try:
        code = main(["--data-dir", str(tmp_path), "cluster", "status", "--json"])
        shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        member.stop()
        engine.dispose()
    assert code == 0
    assert [r["id"] for r in shown["replicas"]] == ["cli-1"]
    assert shown["replicas"][0]["alive"] and shown["components"]["controller"] == ["cli-1"]
    assert shown["components"]["api"] == []
    (lease,) = shown["leases"]
    assert lease["name"] == "rollouts" and lease["holder"] == "cli-1"
    assert lease["component"] == "controller" and lease["valid"] and lease["holder_alive"]
