"""Two monitoring replicas on one PostgreSQL database never both alert on one scope.

Two replicas (each its own :class:`ClusterMember`, detector cache and engine, evaluating in
its own thread, as two ``hub serve --components monitor`` processes would) over six model
versions whose telemetry drifts, written in rounds while they run. Split: each evaluates only
the versions it owns by rendezvous hash, together all of them. Contended (both believe they
own everything, as while one joins or leaves): the per-version transaction lock still lets
only one evaluate a version at a time. Either way each scope's alert is opened once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from hub.cluster.member import ClusterMember
from hub.core.db import make_engine
from hub.monitoring._cache import DetectorCache
from hub.monitoring.service import MonitorConfig, evaluate
from hub.tables import Alert, create_all
from tests.monitoring.fleetdata import Fleet
from tests.monitoring.tiny_detector import tiny_factory

pytestmark = pytest.mark.timeout(120)

CONFIG = MonitorConfig(window_size=200, false_alarm_rate=0.001, min_labels=50)
MODELS = [f"m{i}" for i in range(6)]
ROUNDS = 3


@pytest.fixture
def engine(fresh_postgres: str) -> Iterator[Engine]:
    made = make_engine(fresh_postgres)
    create_all(made)
    try:
        yield made
    finally:
        made.dispose()


class Replica:
    """One monitoring replica: evaluate in a loop until stopped; what it opened, and which
    versions it evaluated."""

    def __init__(self, url: str, owns: Callable[[str, str], bool] | None) -> None:
        self.engine = make_engine(url)
        self.owns, self.cache = owns, DetectorCache(factory=tiny_factory)
        self.opened: list[tuple[str, str, str, str, str]] = []
        self.versions: set[str] = set()
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            report = evaluate(self.engine, config=CONFIG, cache=self.cache, owns=self.owns)
            self.errors += report.errors
            self.versions.update(report.versions)
            self.opened += [
                (a.model, a.version, a.kind, a.scope, a.detector) for a in report.opened
            ]

    def __enter__(self) -> Replica:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.engine.dispose()


def _drift(engine: Engine) -> list[Fleet]:
    fleets = [
        Fleet(engine=engine, model=m, digest="sha256:" + f"{i:02x}" * 32, seed=i).register()
        for i, m in enumerate(MODELS)
    ]
    return fleets


def _run_rounds(fleets: list[Fleet], replicas: list[Replica]) -> None:
    for _ in range(ROUNDS):
        for fleet in fleets:
            devices = {f"{fleet.model}-1": "north", f"{fleet.model}-2": "south"}
            fleet.telemetry(devices=devices, windows=4, per_window=50, shift=1.0)
    done = threading.Event()

    def settled() -> bool:
        with Session(fleets[0].engine) as s:
            # every version: device x2, group x2 and version scopes
            return len(s.exec(select(Alert)).all()) >= 5 * len(MODELS)

    for _ in range(300):
        if settled():
            done.set()
            break
        threading.Event().wait(0.1)  # polling the database, bounded
    assert done.is_set(), [r.opened for r in replicas]
    threading.Event().wait(0.5)  # a duplicate would show up now


def _check(engine: Engine, replicas: list[Replica]) -> None:
    with Session(engine) as s:
        rows = s.exec(select(Alert)).all()
    keys = Counter((a.model, a.version, a.kind, a.scope, a.detector) for a in rows)
    assert len(keys) == 5 * len(MODELS) and set(keys.values()) == {1}, keys
    opened = Counter(k for r in replicas for k in r.opened)
    assert opened == keys  # each alert announced once, by one replica
    assert all(r.errors == 0 for r in replicas)


def test_two_replicas_split_the_versions(engine: Engine, fresh_postgres: str) -> None:
    members = [
        ClusterMember(engine=engine, components=["monitor"], lease_s=3.0, replica_id=name)
        for name in ("mon-a", "mon-b")
    ]
    for member in members:
        member.start()
    for _ in range(100):  # each sees the other live (within a tick: a third of the lease)
        if all(len(m.health()["live"].get("monitor", [])) == 2 for m in members):
            break
        threading.Event().wait(0.05)
    assert all(len(m.health()["live"]["monitor"]) == 2 for m in members)
    try:
        fleets = _drift(engine)
        replicas = [
            Replica(fresh_postgres, lambda m, v, c=member: c.owns("monitor", f"{m}@{v}"))
            for member in members
        ]
        with replicas[0], replicas[1]:
            _run_rounds(fleets, replicas)
        _check(engine, replicas)
        a, b = (r.versions for r in replicas)
        assert a and b and not a & b, (a, b)  # both worked, never on the same version
        assert a | b == {f"{m}@1" for m in MODELS}
        owners = {k[3] for k in replicas[0].opened} & {k[3] for k in replicas[1].opened}
        assert all(not scope.startswith("version:") for scope in owners)
    finally:
        for member in members:
            member.stop()


def test_two_replicas_that_both_claim_every_version_still_alert_once(
    engine: Engine, fresh_postgres: str
) -> None:
    fleets = _drift(engine)
    replicas = [Replica(fresh_postgres, None), Replica(fresh_postgres, None)]
    with replicas[0], replicas[1]:
        _run_rounds(fleets, replicas)
    _check(engine, replicas)
