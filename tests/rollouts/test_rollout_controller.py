"""The controller's tick against a real database with a recording publisher (no broker):
events move device rows, commands go out in one batch, busy devices are not re-commanded,
and a failing tick does not stop the controller thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from hub.core.db import make_engine, session_scope
from hub.fleet.commands import PublishError
from hub.rollouts import controller as controller_mod
from hub.rollouts import service
from hub.rollouts.controller import RolloutController
from hub.tables import DeploymentEventRow, Device, create_all, drop_all
from hub.tables.devices import STATE_RECEIVED_KEY
from hub.tables.rollouts import RolloutDevice
from proto import messages_pb2 as pb

DIGEST = "sha256:" + "ab" * 32


class RecordingPublisher:
    """Stands in for :class:`CommandPublisher`: acknowledges the first ``ack`` commands."""

    def __init__(self) -> None:
        self.sent: list[pb.Command] = []
        self.batches = 0
        self.ack: int | None = None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish_many(self, commands: Sequence[pb.Command]) -> tuple[int, PublishError | None]:
        self.batches += 1
        n = len(commands) if self.ack is None else min(self.ack, len(commands))
        self.sent.extend(commands[:n])
        return n, None if n == len(commands) else PublishError("no PUBACK (test)")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    create_all(eng)
    yield eng
    drop_all(eng)
    eng.dispose()


def _setup(engine: Engine, n: int, *, state_ms: int = 0) -> tuple[str, RecordingPublisher]:
    with session_scope(engine) as s:
        for i in range(n):
            s.add(
                Device(
                    id=f"d{i:02d}",
                    group="default",
                    tags={},
                    online=True,
                    state={"online": True, "updatedAt": str(state_ms)},
                    last_seen_at=datetime.now(UTC) - timedelta(seconds=5),
                )
            )
    with session_scope(engine) as s:
        rollout = service.create_rollout(
            s,
            model="m",
            version="2",
            bundle_digest=DIGEST,
            bundle_size=10,
            selector="all",
            phases="100%",
            bake_s=0,
            probation_s=0,
            max_commands_per_s=100000,
        )
        rollout_id = str(rollout.id)
    return rollout_id, RecordingPublisher()


def _controller(engine: Engine, publisher: RecordingPublisher) -> RolloutController:
    return RolloutController(
        engine=engine,
        mqtt_url="mqtt://127.0.0.1:1",
        artifact_endpoint="127.0.0.1:1",
        max_commands_per_s=100000,
        publisher=publisher,  # type: ignore[arg-type]
    )


def _rows(engine: Engine, rollout_id: str) -> dict[str, RolloutDevice]:
    with session_scope(engine) as s:
        return {d.device_id: d for d in service.devices_of(s, rollout_id=rollout_id)}


def _event(engine: Engine, row: RolloutDevice, kind: str) -> None:
    with session_scope(engine) as s:
        s.add(
            DeploymentEventRow(
                event_id=uuid.uuid4().hex,
                device_id=row.device_id,
                command_id=row.command_id,
                rollout_id=row.rollout_id,
                kind=kind,
                at=datetime.now(UTC),
            )
        )


def _seen(engine: Engine, device_id: str, *, state_ms: int | None = None) -> None:
    with session_scope(engine) as s:
        device = s.get(Device, device_id)
        assert device is not None
        device.last_seen_at = datetime.now(UTC)
        if state_ms is not None:
            device.state = {"online": True, "updatedAt": str(state_ms)}
        s.add(device)


def test_events_move_rows_and_commands_go_out_in_one_batch(engine: Engine) -> None:
    rollout_id, publisher = _setup(engine, 12)
    ctl = _controller(engine, publisher)
    ctl.tick()  # start the phase, stage and publish every device
    assert publisher.batches == 1 and len(publisher.sent) == 12
    rows = _rows(engine, rollout_id)
    assert all(d.state == "commanded" and d.published_at is not None for d in rows.values())
    # events arrive in any interleaving; a row takes the furthest one, also when an earlier
    # kind is stored after it
    for i, row in enumerate(rows.values()):
        _event(engine, row, "downloading")
        if i % 3:
            _event(engine, row, "healthy")
            _event(engine, row, "downloading")
    ctl.tick()
    states = {d.device_id: d.state for d in _rows(engine, rollout_id).values()}
    assert sum(s == "healthy" for s in states.values()) == 8
    assert sum(s == "downloading" for s in states.values()) == 4
    for i, row in enumerate(rows.values()):
        if not i % 3:
            _event(engine, row, "healthy")
    ctl.tick()
    assert {d.state for d in _rows(engine, rollout_id).values()} == {"healthy"}
    with session_scope(engine) as s:
        assert service.get_rollout(s, rollout_id=rollout_id).state == "completed"
    assert len(publisher.sent) == 12  # nothing was sent twice


def test_only_acknowledged_commands_are_marked_published(engine: Engine) -> None:
    rollout_id, publisher = _setup(engine, 5)
    publisher.ack = 2
    ctl = _controller(engine, publisher)
    ctl.tick()
    rows = _rows(engine, rollout_id)
    assert sum(d.published_at is not None for d in rows.values()) == 2
    publisher.ack = None
    ctl.tick()  # the rest go out with the same command ids
    rows = _rows(engine, rollout_id)
    assert all(d.published_at is not None for d in rows.values())
    assert sorted(c.command_id for c in publisher.sent) == sorted(
        d.command_id for d in rows.values()
    )


def test_a_busy_device_is_not_re_commanded_but_a_reconnected_one_is(engine: Engine) -> None:
    rollout_id, publisher = _setup(engine, 2, state_ms=1)
    ctl = _controller(engine, publisher)
    ctl.tick()
    assert len(publisher.sent) == 2
    time.sleep(0.01)
    # d00 keeps sending telemetry (seen after the publish) but has not got to the command
    # yet: its state is older than the command. d01 reconnected: a fresh retained state.
    _seen(engine, "d00")
    _seen(engine, "d01", state_ms=int(time.time() * 1000) + 1)
    ctl.tick()
    assert [c.device_id for c in publisher.sent[2:]] == ["d01"]
    rows = _rows(engine, rollout_id)
    assert publisher.sent[2].command_id == rows["d01"].command_id  # the same command again
    # long after the publish, a device seen but silent gets it again as well
    with session_scope(engine) as s:
        row = s.get(RolloutDevice, (rollout_id, "d00"))
        assert row is not None
        row.published_at = datetime.now(UTC) - timedelta(seconds=controller_mod.NUDGE_GRACE_S + 5)
        s.add(row)
    _seen(engine, "d00")
    ctl.tick()
    assert [c.device_id for c in publisher.sent[3:]] == ["d00"]


def test_a_device_with_a_clock_hours_behind_that_reconnected_is_re_commanded(
    engine: Engine,
) -> None:
    """Its reconnect state's ``updatedAt`` is 3 h older than the command by its own clock;
    the hub's receive time (``STATE_RECEIVED_KEY``) says it came after. Before, such a device
    got the command again only if it was seen 30 s later: an idle one never was, and timed
    out (the flake of tests/faults/test_clock_skew.py when agents came online late)."""
    rollout_id, publisher = _setup(engine, 2, state_ms=1)
    ctl = _controller(engine, publisher)
    ctl.tick()
    assert len(publisher.sent) == 2
    time.sleep(0.01)
    now_ms = int(time.time() * 1000)
    behind = str(now_ms - 3 * 3600 * 1000)
    with session_scope(engine) as s:
        for device_id, received in (("d00", 1), ("d01", now_ms)):  # d00: busy, old state
            device = s.get(Device, device_id)
            assert device is not None
            device.last_seen_at = datetime.now(UTC)
            device.state = {"online": True, "updatedAt": behind, STATE_RECEIVED_KEY: str(received)}
            s.add(device)
    ctl.tick()
    assert [c.device_id for c in publisher.sent[2:]] == ["d01"]
    assert publisher.sent[2].command_id == _rows(engine, rollout_id)["d01"].command_id


def test_a_failing_tick_does_not_stop_the_controller(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick that raises (the database briefly locked or gone) used to end the controller
    thread for good: device rows stopped following their events while ingest went on."""
    rollout_id, publisher = _setup(engine, 3)
    ctl = _controller(engine, publisher)
    ctl.tick_s = 0.02
    real_tick, calls = ctl.tick, []
    ticked = threading.Event()

    def flaky_tick() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("database is locked (test)")
        real_tick()
        ticked.set()

    monkeypatch.setattr(ctl, "tick", flaky_tick)
    with ctl:
        assert ticked.wait(10)
        rows = _rows(engine, rollout_id)
        for row in rows.values():
            _event(engine, row, "healthy")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if {d.state for d in _rows(engine, rollout_id).values()} == {"healthy"}:
                break
            time.sleep(0.05)
    assert {d.state for d in _rows(engine, rollout_id).values()} == {"healthy"}
    assert ctl.errors >= 2


def test_device_rows_follow_their_events_while_the_gates_are_evaluated(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lag bug: the tick that moved the last devices to healthy also evaluated the
    gates (tens of seconds over thousands of telemetry windows) in the same transaction, so
    those rows stayed ``downloading`` for everyone else (and SQLite's ingest waited on the
    write lock) until the gates were done. Rows are now committed before the gates run."""
    rollout_id, publisher = _setup(engine, 4)
    ctl = _controller(engine, publisher)
    ctl.tick()
    for row in _rows(engine, rollout_id).values():
        _event(engine, row, "downloading")
    ctl.tick()
    assert {d.state for d in _rows(engine, rollout_id).values()} == {"downloading"}
    for row in _rows(engine, rollout_id).values():
        _event(engine, row, "healthy")
    in_gates, release = threading.Event(), threading.Event()
    real_evaluate = controller_mod.evaluate

    def slow_evaluate(*args, **kwargs):  # type: ignore[no-untyped-def]
        in_gates.set()
        assert release.wait(20)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(controller_mod, "evaluate", slow_evaluate)
    tick = threading.Thread(target=ctl.tick)
    tick.start()
    try:
        assert in_gates.wait(20)
        # the gates are being evaluated: the rows are already healthy for everyone
        assert {d.state for d in _rows(engine, rollout_id).values()} == {"healthy"}
        _event(engine, next(iter(_rows(engine, rollout_id).values())), "healthy")  # ingest
    finally:
        release.set()
        tick.join(20)
    with session_scope(engine) as s:
        assert service.get_rollout(s, rollout_id=rollout_id).state == "completed"


def test_a_tick_loads_only_the_rows_it_can_change(engine: Engine) -> None:
    """A tick used to load every device row and every device (with its state JSON) as ORM
    objects, so its cost grew with the devices already done. Rows are now read as plain
    columns (the live ones written back as a batched UPDATE of what changed), device states
    only for the devices that need them; the settled rows still count in the gates and are
    still rolled back."""
    rollout_id, publisher = _setup(engine, 6)
    ctl = _controller(engine, publisher)
    ctl.tick()
    rows = sorted(_rows(engine, rollout_id).values(), key=lambda r: r.device_id)
    for row in rows[:4]:
        _event(engine, row, "healthy")
    ctl.tick()
    assert [r.state for r in _rows(engine, rollout_id).values()].count("healthy") == 4
    loaded: list[str] = []
    devices: list[str] = []

    def on_row(target: RolloutDevice, _context: object) -> None:
        loaded.append(target.device_id)

    def on_device(target: Device, _context: object) -> None:
        devices.append(target.id)

    event.listen(RolloutDevice, "load", on_row)
    event.listen(Device, "load", on_device)
    try:
        ctl.tick()
    finally:
        event.remove(RolloutDevice, "load", on_row)
        event.remove(Device, "load", on_device)
    assert loaded == []  # not even the two still in flight: plain columns
    assert devices == []
    # one failure among six reports: the settled rows count in the gate ...
    _event(engine, rows[4], "failed")
    _event(engine, rows[5], "healthy")
    ctl.tick()
    with session_scope(engine) as s:
        rollout = service.get_rollout(s, rollout_id=rollout_id)
        assert rollout.state == "rolling_back"
        gate = rollout.phase_results["0"]["gates"][0]
    assert gate["name"] == "install_failure_rate" and gate["detail"] == "1 failed, 5 healthy"
    # ... and every healthy device, settled or not, gets a rollback
    ctl.tick()
    rolled = sorted(c.device_id for c in publisher.sent if c.HasField("rollback"))
    assert rolled == sorted(r.device_id for r in rows if r.device_id != rows[4].device_id)


def test_a_tick_writes_only_the_columns_it_changed(engine: Engine) -> None:
    """Live rows are written back column by column: what an operator (or another writer)
    changed in another column between the read and the write stays as it was."""
    from hub.rollouts import _rows as rows_mod

    rollout_id, publisher = _setup(engine, 3)
    _controller(engine, publisher).tick()
    with session_scope(engine) as s:
        live, _, _ = rows_mod.live_rows(s, rollout_id)
    assert [r.changes() for r in live] == [{}, {}, {}]
    with session_scope(engine) as s:  # another writer, after the read
        row = s.get(RolloutDevice, (rollout_id, "d01"))
        assert row is not None
        row.reason = "set elsewhere"
        s.add(row)
    live[1].state = "downloading"
    assert live[1].changes() == {"state": "downloading"}
    with session_scope(engine) as s:
        assert rows_mod.save(s, live) == 1
    assert live[1].changes() == {}
    rows = _rows(engine, rollout_id)
    assert rows["d01"].state == "downloading" and rows["d01"].reason == "set elsewhere"
    assert rows["d00"].state == rows["d02"].state == "commanded"


def test_new_deploys_go_only_into_the_artifact_servers_free_download_slots(
    engine: Engine,
) -> None:
    """Admission by the server's real capacity, not a fixed number: with 5 slots, 2 of
    them streaming, 3 devices are commanded; commanded devices that have not started
    their download hold a slot each until they stream; slots that free up are filled."""
    from hub.rpc.slots import SlotsSnapshot

    rollout_id, publisher = _setup(engine, 12)
    slots = {"capacity": 5, "in_flight": 2}

    def capacity() -> SlotsSnapshot:
        return SlotsSnapshot(mean_stream_s=0.1, served=0, refused=0, **slots)

    ctl = RolloutController(
        engine=engine,
        mqtt_url="mqtt://127.0.0.1:1",
        artifact_endpoint="127.0.0.1:1",
        max_commands_per_s=100000,
        publisher=publisher,  # type: ignore[arg-type]
        capacity=capacity,
    )
    ctl.tick()
    assert len(publisher.sent) == 3
    slots["in_flight"] = 0
    ctl.tick()  # 5 free, but the 3 commanded devices will need theirs
    assert len(publisher.sent) == 5
    commanded = [r for r in _rows(engine, rollout_id).values() if r.command_id]
    for row in commanded:  # all five stream now (the server counts them)
        _event(engine, row, "downloading")
    slots["in_flight"] = 5
    ctl.tick()
    assert len(publisher.sent) == 5
    for row in commanded[:2]:  # two finished
        _event(engine, row, "healthy")
    slots["in_flight"] = 3
    ctl.tick()
    assert len(publisher.sent) == 7
    assert ctl.health()["download_slots"]["free"] == 2
    assert ctl.health()["tick_cpu_s"] > 0  # the controller's own CPU, counted per tick
    with session_scope(engine) as s:
        from hub.rollouts.views import rollout_view

        queue = rollout_view(s, service.get_rollout(s, rollout_id=rollout_id))["queue"]
    assert queue["waiting_for_slot"] == 5 and queue["oldest_wait_s"] >= 0
    assert (queue["commanded"], queue["downloading"]) == (2, 3)
    assert queue["admission_wait"]["devices"] == 7


def test_without_an_answer_from_the_artifact_server_the_fixed_limit_applies(
    engine: Engine,
) -> None:
    _, publisher = _setup(engine, 6)

    def capacity() -> None:
        raise ConnectionError("the artifact server is restarting (test)")

    ctl = RolloutController(
        engine=engine,
        mqtt_url="mqtt://127.0.0.1:1",
        artifact_endpoint="127.0.0.1:1",
        max_commands_per_s=100000,
        max_concurrent_downloads=4,
        publisher=publisher,  # type: ignore[arg-type]
        capacity=capacity,
    )
    ctl.tick()
    assert len(publisher.sent) == 4 and ctl.errors == 0


def test_waiting_rows_are_read_as_columns_and_loaded_only_to_be_commanded_or_skipped(
    engine: Engine,
) -> None:
    """Rows waiting for a command (most of a big rollout while a phase runs) are columns
    (``live_rows``' second list); a tick loads only those it commands or skips. A device
    removed from the registry while waiting is skipped when its turn comes."""
    from hub.rollouts import _rows as rows_mod

    rollout_id, publisher = _setup(engine, 5)
    with session_scope(engine) as s:
        rollout = service.get_rollout(s, rollout_id=rollout_id)
        rollout.max_concurrent_downloads = 2
        s.add(rollout)
    _controller(engine, publisher).tick()
    assert len(publisher.sent) == 2
    with session_scope(engine) as s:
        live, waiting, settled = rows_mod.live_rows(s, rollout_id)
    assert [r.state for r in live] == ["commanded"] * 2 and settled == []
    assert [(w.device_id, w.state) for w in waiting] == [(f"d0{i}", "pending") for i in (2, 3, 4)]
    with session_scope(engine) as s:  # d02 leaves the registry
        device = s.get(Device, "d02")
        assert device is not None
        s.delete(device)
    for row in _rows(engine, rollout_id).values():
        if row.command_id:
            _event(engine, row, "healthy")
    _controller(engine, publisher).tick()  # a fresh controller: no cached members
    rows = _rows(engine, rollout_id)
    assert rows["d02"].state == "skipped" and "no longer matches" in rows["d02"].reason
    assert [c.device_id for c in publisher.sent[2:]] == ["d03", "d04"]


def test_the_outbox_is_read_when_a_tick_staged_commands_and_at_least_every_second(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, publisher = _setup(engine, 3)
    reads: list[str] = []
    real = controller_mod.publish_staged

    def counting(engine: Engine, rollout_id: str, **kw: object) -> int:
        reads.append(rollout_id)
        return real(engine, rollout_id, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(controller_mod, "publish_staged", counting)
    ctl = _controller(engine, publisher)
    ctl.tick()
    assert len(reads) == 1 and len(publisher.sent) == 3
    ctl.tick()  # nothing staged, the outbox read a moment ago: not read
    assert len(reads) == 1
    monkeypatch.setattr(controller_mod, "OUTBOX_CHECK_S", 0.0)
    ctl.tick()  # the safety net (commands staged by an earlier controller)
    assert len(reads) == 2


def test_a_rollout_whose_reconcile_changed_nothing_is_skipped_until_something_moves(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout_id, publisher = _setup(engine, 3)
    ctl = _controller(engine, publisher)
    for _ in range(3):  # stage and publish, mark the phase commanded, then change nothing
        ctl.tick()
    assert ctl.skipped == 0
    ctl.tick()  # nothing new since a reconcile that changed nothing
    assert ctl.skipped == 1
    _event(engine, _rows(engine, rollout_id)["d00"], "received")
    ctl.tick()  # a new device event: reconciled, the row moves
    assert ctl.skipped == 1 and _rows(engine, rollout_id)["d00"].state == "received"
    ctl.tick()  # reconciled: nothing changed
    ctl.tick()
    assert ctl.skipped == 2
    with session_scope(engine) as s:  # an operator's action logs a rollout event
        service.pause(s, rollout_id=rollout_id)
        service.resume(s, rollout_id=rollout_id)
    ctl.tick()
    assert ctl.skipped == 2
    ctl.tick()
    assert ctl.skipped == 3
    monkeypatch.setattr(controller_mod, "QUIET_RECHECK_S", 0.0)
    ctl.tick()  # time-driven steps (timeouts, bake time, nudges) still get their reconcile
    assert ctl.skipped == 3
