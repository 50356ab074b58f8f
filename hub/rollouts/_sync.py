"""Reading the fleet for the controller: device events → device states, selector membership,
and the commands a device row stands for (rebuilt identically after a restart)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session, col, select

from hub.core.clock import utcnow
from hub.rollouts._rows import Live, Member, insert, plain
from hub.rollouts.events import log_device_events
from hub.tables import DeploymentEventRow
from hub.tables.rollouts import DeviceState, Rollout
from proto import messages_pb2 as pb

S = DeviceState
# Progress of a deploy, in order; a device only moves forward.
DEPLOY_RANK = {
    S.PENDING: 0,
    S.COMMANDED: 1,
    S.RECEIVED: 2,
    S.DOWNLOADING: 3,
    S.DOWNLOADED: 4,
    S.VERIFIED: 5,
    S.ACTIVATED: 6,
    S.TIMED_OUT: 7,
    S.HEALTHY: 8,
    S.FAILED: 9,
}
IN_FLIGHT = {S.COMMANDED, S.RECEIVED, S.DOWNLOADING, S.DOWNLOADED, S.VERIFIED, S.ACTIVATED}
DOWNLOADING = {S.COMMANDED, S.RECEIVED, S.DOWNLOADING}
REPORTED = {S.HEALTHY, S.FAILED}
TOUCHED = IN_FLIGHT | {S.HEALTHY, S.TIMED_OUT}  # may serve the candidate: roll these back
_EVENT_STATE = {
    "received": S.RECEIVED,
    "downloading": S.DOWNLOADING,
    "downloaded": S.DOWNLOADED,
    "verified": S.VERIFIED,
    "activated": S.ACTIVATED,
    "healthy": S.HEALTHY,
    "failed": S.FAILED,
    "rolled_back": S.FAILED,  # for a deploy: the device rejected it and kept its model
}


def active_slot(state: dict[str, Any]) -> tuple[str, str, str]:
    """(model, version, digest) of the model a device reported serving (ingest stores
    ``AgentState`` as protobuf JSON: camelCase keys)."""
    active = state.get("active") or {}
    digest = active.get("bundleDigest") or active.get("bundle_digest") or ""
    return str(active.get("model", "")), str(active.get("version", "")), str(digest)


def _events(session: Session, command_ids: Sequence[str]) -> list[tuple[str, str, str]]:
    """(command id, kind, reason) of the events sent for these commands, in arrival order
    (the columns only: a tick re-reads the events of every device in flight)."""
    found: list[tuple[str, str, str]] = []
    for i in range(0, len(command_ids), 500):
        chunk = command_ids[i : i + 500]
        found.extend(
            session.exec(
                select(
                    plain(DeploymentEventRow.command_id),
                    plain(DeploymentEventRow.kind),
                    plain(DeploymentEventRow.reason),
                )
                .where(col(DeploymentEventRow.command_id).in_(chunk))
                .order_by(col(DeploymentEventRow.id))
            ).all()
        )
    return found


def sync_events(session: Session, rollout: Rollout, rows: Sequence[Live]) -> int:
    """Move device rows forward from the events their devices sent; returns rows changed
    (:func:`hub.rollouts._rows.save` writes them)."""
    watch_deploy = {
        d.command_id: d
        for d in rows
        if d.command_id and (d.state in IN_FLIGHT or d.state == S.TIMED_OUT)
    }
    watch_rollback = {
        d.rollback_command_id: d
        for d in rows
        if d.rollback_command_id and d.state == S.ROLLING_BACK
    }
    if not watch_deploy and not watch_rollback:
        return 0
    changed: set[str] = set()
    logged: list[tuple[str, str, str]] = []
    for command_id, kind, reason in _events(session, [*watch_deploy, *watch_rollback]):
        if (d := watch_rollback.get(command_id)) is not None:
            if d.state != S.ROLLING_BACK:
                continue
            if kind == "rolled_back":
                d.state, d.reason = S.ROLLED_BACK, reason
            elif kind == "failed":
                d.state, d.reason = S.ROLLBACK_FAILED, reason
            else:
                continue
        elif (d := watch_deploy.get(command_id)) is not None:
            new = _EVENT_STATE.get(kind)
            if new is None:
                continue
            late_answer = d.state == S.TIMED_OUT and new in REPORTED
            if DEPLOY_RANK[new] <= DEPLOY_RANK.get(S(d.state), 0) and not late_answer:
                continue
            d.state = new
            if new == S.FAILED or reason:
                d.reason = reason
        else:  # pragma: no cover - the query asked only for these ids
            continue
        changed.add(d.device_id)
        if d.state in REPORTED | {S.ROLLED_BACK, S.ROLLBACK_FAILED}:
            logged.append((f"device_{d.state}", d.reason, d.device_id))
    log_device_events(session, rollout, logged)
    return len(changed)


def add_members(
    session: Session, rollout: Rollout, known: Collection[str], devices: Sequence[Member]
) -> list[Live]:
    """Rows for devices that match but have none (``known``: the devices with a row): at the
    start unassigned, later late joiners (they join the last phase, or the current one with
    ``join_phase='current'``)."""
    started = rollout.phase_started_at is not None or rollout.phase > 0
    last = len(rollout.phases) - 1
    added: list[Live] = []
    logged: list[tuple[str, str, str]] = []
    for device in devices:
        if device.id in known:
            continue
        row = Live(rollout_id=rollout.id, device_id=device.id, updated_at=utcnow())
        if started:
            row.late = True
            row.phase = rollout.phase if rollout.join_phase == "current" else last
            logged.append(("device_joined", f"phase {row.phase}", device.id))
        added.append(row)
    insert(session, added)
    log_device_events(session, rollout, logged)
    return added


class Commanded(Protocol):
    """What a command is built from: a device row (``Live``, ``RolloutDevice``, or the
    outbox's columns)."""

    @property
    def device_id(self) -> str: ...
    @property
    def command_id(self) -> str: ...
    @property
    def issued_at_ms(self) -> int: ...
    @property
    def rollback_command_id(self) -> str: ...
    @property
    def rollback_issued_at_ms(self) -> int: ...


#: A short-lived download URL for a bundle digest and when it expires (unix ms), or None:
#: devices then fetch it over gRPC only. ``hub serve`` gives one signed by the S3 store
#: (:class:`hub.core.artifacts.DownloadLinks`) when ``EDGELOOP_ARTIFACT_PRESIGN`` is on.
BundleLinks = Callable[[str], "tuple[str, int] | None"]


def deploy_command(
    rollout: Rollout, row: Commanded, *, endpoint: str, links: BundleLinks | None = None
) -> pb.Command:
    deploy = pb.Deploy(
        rollout_id=rollout.id,
        model=rollout.model,
        version=rollout.version,
        bundle_digest=rollout.bundle_digest,
        bundle_size=rollout.bundle_size,
        artifact_endpoint=endpoint,
    )
    if links is not None and (link := links(rollout.bundle_digest)) is not None:
        deploy.bundle_url, deploy.bundle_url_expires_at = link
    if rollout.probation_s is not None:
        deploy.probation_seconds = rollout.probation_s
    return pb.Command(
        command_id=row.command_id,
        device_id=row.device_id,
        issued_at=row.issued_at_ms,
        deploy=deploy,
    )


def rollback_command(rollout: Rollout, row: Commanded) -> pb.Command:
    return pb.Command(
        command_id=row.rollback_command_id,
        device_id=row.device_id,
        issued_at=row.rollback_issued_at_ms,
        rollback=pb.Rollback(
            rollout_id=rollout.id, to_version="previous", reason=f"rollout {rollout.id} rolled back"
        ),
    )


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)
