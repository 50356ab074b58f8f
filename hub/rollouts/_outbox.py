"""Publishing a rollout's staged commands after the commit that staged them: QoS 1, wait for
the PUBACK, then mark the row published. A crash in between republishes the same command id
(agents dedupe). Shadow starts and stops first, then deploys, then rollbacks.

Deploys and rollbacks go out as one batch: every command is handed to the broker at once,
the PUBACKs are awaited together, and the acknowledged rows are marked in one transaction
(one round trip and one commit per tick, not one of each per device). The rows are read
and marked as plain columns (``executemany``), not ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import and_, bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.core.clock import utcnow
from hub.core.db import session_scope
from hub.fleet.commands import CommandPublisher
from hub.rollouts import _shadow, _sync
from hub.tables.rollouts import Rollout, RolloutDevice, RolloutShadow
from proto import messages_pb2 as pb


@dataclass(frozen=True, slots=True)
class _Unpublished:
    """The columns of a device row with a staged, unpublished command."""

    rollout_id: str
    device_id: str
    command_id: str
    issued_at_ms: int
    published_at: datetime | None
    rollback_command_id: str
    rollback_issued_at_ms: int
    rollback_published_at: datetime | None


def publish_staged(
    engine: Engine,
    rollout_id: str,
    *,
    publisher: CommandPublisher,
    endpoint: str,
    links: _sync.BundleLinks | None = None,
) -> int:
    """Publish every staged, unpublished command of the rollout; returns how many rows.
    ``links``: presigned bundle URLs for the deploy and shadow commands (optional).

    Shadow rows are read only for a rollout with a shadow phase (only those have any)."""
    with Session(engine) as session:
        rollout = session.get(Rollout, rollout_id)
        found = session.exec(
            select(*(getattr(RolloutDevice, f.name) for f in fields(_Unpublished))).where(
                RolloutDevice.rollout_id == rollout_id,
                (col(RolloutDevice.published_at).is_(None) & (RolloutDevice.command_id != ""))
                | (
                    col(RolloutDevice.rollback_published_at).is_(None)
                    & (RolloutDevice.rollback_command_id != "")
                ),
            )
        ).all()
    rows = [_Unpublished(*r) for r in found]
    count = 0
    if rollout is not None and rollout.shadow:  # shadow starts and stops go first
        count = _publish_shadows(
            engine, rollout_id, publisher=publisher, endpoint=endpoint, links=links
        )
    if rollout is None or not rows:
        return count
    staged: list[tuple[_Unpublished, str, pb.Command]] = []
    for row in rows:  # a row's deploy goes before its rollback
        if row.command_id and row.published_at is None:
            command = _sync.deploy_command(rollout, row, endpoint=endpoint, links=links)
            staged.append((row, "published_at", command))
        if row.rollback_command_id and row.rollback_published_at is None:
            staged.append((row, "rollback_published_at", _sync.rollback_command(rollout, row)))
    acked, error = publisher.publish_many([command for _, _, command in staged])
    _mark(engine, [(row, field) for row, field, _ in staged[:acked]])
    if error is not None:
        raise error
    return count + len({(row.rollout_id, row.device_id) for row, _, _ in staged[:acked]})


def _publish_shadows(
    engine: Engine,
    rollout_id: str,
    *,
    publisher: CommandPublisher,
    endpoint: str,
    links: _sync.BundleLinks | None = None,
) -> int:
    with Session(engine) as session:
        rollout = session.get(Rollout, rollout_id)
        rows = session.exec(
            select(RolloutShadow).where(
                RolloutShadow.rollout_id == rollout_id,
                (col(RolloutShadow.published_at).is_(None) & (RolloutShadow.command_id != ""))
                | (
                    col(RolloutShadow.stop_published_at).is_(None)
                    & (RolloutShadow.stop_command_id != "")
                ),
            )
        ).all()
    if rollout is None:
        return 0
    count = 0
    for row in rows:
        for field, command in _shadow.commands(rollout, row, endpoint=endpoint, links=links):
            publisher.publish(command)
            with session_scope(engine) as session:
                fresh = session.get(RolloutShadow, (row.rollout_id, row.device_id))
                if fresh is not None:
                    setattr(fresh, field, utcnow())
                    session.add(fresh)
            count += 1
    return count


def _mark(engine: Engine, published: list[tuple[_Unpublished, str]]) -> None:
    """Set ``field`` on each row, in one transaction (one ``executemany`` per field), where
    the row still holds the command id that was published (a row re-staged meanwhile keeps
    its new command unpublished)."""
    if not published:
        return
    at = utcnow()
    table = RolloutDevice.__table__  # type: ignore[attr-defined]  # sqlmodel's table
    with session_scope(engine) as session:
        connection = session.connection()
        for field, key in (
            ("published_at", "command_id"),
            ("rollback_published_at", "rollback_command_id"),
        ):
            params = [
                {"k_rollout": row.rollout_id, "k_device": row.device_id, "k_id": getattr(row, key)}
                for row, done in published
                if done == field
            ]
            if not params:
                continue
            statement = (
                update(table)
                .where(
                    and_(
                        table.c.rollout_id == bindparam("k_rollout"),
                        table.c.device_id == bindparam("k_device"),
                        table.c[key] == bindparam("k_id"),
                    )
                )
                .values({field: at})
            )
            connection.execute(statement, params)
