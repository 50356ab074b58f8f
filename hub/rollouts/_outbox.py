"""Publishing a rollout's staged commands after the commit that staged them: QoS 1, wait for
the PUBACK, then mark the row published. A crash in between republishes the same command id
(agents dedupe). Shadow starts and stops first, then deploys, then rollbacks."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.db import session_scope
from hub.rollouts import _shadow, _sync
from hub.rollouts._publisher import CommandPublisher
from hub.rollouts.service import now
from hub.tables.rollouts import Rollout, RolloutDevice, RolloutShadow


def publish_staged(
    engine: Engine, rollout_id: str, *, publisher: CommandPublisher, endpoint: str
) -> int:
    """Publish every staged, unpublished command of the rollout; returns how many rows."""
    count = _publish_shadows(engine, rollout_id, publisher=publisher, endpoint=endpoint)
    with Session(engine) as session:
        rollout = session.get(Rollout, rollout_id)
        rows = session.exec(
            select(RolloutDevice).where(
                RolloutDevice.rollout_id == rollout_id,
                (col(RolloutDevice.published_at).is_(None) & (RolloutDevice.command_id != ""))
                | (
                    col(RolloutDevice.rollback_published_at).is_(None)
                    & (RolloutDevice.rollback_command_id != "")
                ),
            )
        ).all()
    if rollout is None or not rows:
        return count
    for row in rows:
        if row.command_id and row.published_at is None:
            publisher.publish(_sync.deploy_command(rollout, row, endpoint=endpoint))
            _mark(engine, row, "published_at")
        if row.rollback_command_id and row.rollback_published_at is None:
            publisher.publish(_sync.rollback_command(rollout, row))
            _mark(engine, row, "rollback_published_at")
        count += 1
    return count


def _publish_shadows(
    engine: Engine, rollout_id: str, *, publisher: CommandPublisher, endpoint: str
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
        for field, command in _shadow.commands(rollout, row, endpoint=endpoint):
            publisher.publish(command)
            with session_scope(engine) as session:
                fresh = session.get(RolloutShadow, (row.rollout_id, row.device_id))
                if fresh is not None:
                    setattr(fresh, field, now())
                    session.add(fresh)
            count += 1
    return count


def _mark(engine: Engine, row: RolloutDevice, field: str) -> None:
    key = "command_id" if field == "published_at" else "rollback_command_id"
    with session_scope(engine) as session:
        fresh = session.get(RolloutDevice, (row.rollout_id, row.device_id))
        if fresh is not None and getattr(fresh, key) == getattr(row, key):
            setattr(fresh, field, now())
            session.add(fresh)
