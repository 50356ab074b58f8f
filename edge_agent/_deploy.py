"""What the agent does with commands: deploy, rollback, shadow, config, rotate_key.

Every step is reported as a ``DeploymentEvent`` through the durable queue. A deploy fetches
the bundle (resumable), verifies digest and signature before anything lands in a slot,
installs into the standby slot, loads it and runs the bundle's self-test, and only then
switches atomically. A model that fails on probation (error rate) is rolled back by the
agent itself. Commands are idempotent by id: a repeat is answered with its last event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Protocol

from edge_agent._fetch import DownloadError, download_bundle
from edge_agent._runtime import LoadedModel, ModelLoadError, health_check, load_slot
from edge_agent._slots import SlotError, SlotStore
from edge_agent._trust import RotationRefused, TrustedKey
from model_packager.bundle import BundleError, open_bundle
from proto import messages_pb2 as pb

__all__ = ["CommandLog", "DeployHost", "Deployer", "InflightDeploy"]

log = logging.getLogger("edgeloop.agent.deploy")

REMEMBERED_COMMANDS = 256
K = pb.EventKind


FINAL_KINDS = {K.EVENT_KIND_HEALTHY, K.EVENT_KIND_FAILED, K.EVENT_KIND_ROLLED_BACK}
PERSISTED_KINDS = FINAL_KINDS | {K.EVENT_KIND_RECEIVED, K.EVENT_KIND_ACTIVATED}


class DeployHost(Protocol):
    """What a :class:`Deployer` needs from the agent it works for (the agent implements it)."""

    def enqueue_event(self, event: pb.DeploymentEvent) -> None:
        """Queue a deployment event for the hub (durably)."""

    def serve(self, model: LoadedModel) -> None:
        """Make ``model`` the one that answers predictions."""

    def set_shadow(self, model: LoadedModel | None, fraction: float) -> None:
        """Also run ``model`` on a sampled ``fraction`` of the calls (``None`` stops)."""

    def prediction_counts(self) -> tuple[int, int]:
        """``(errors, calls)`` of the predictor so far: probation watches their growth."""


class CommandLog:
    """The last command ids the agent acted on, with the last event kind of each (persisted)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: OrderedDict[str, int] = OrderedDict()
        with contextlib.suppress(OSError, ValueError):  # missing or damaged: start empty
            self._seen.update(json.loads(path.read_text()))

    def last(self, command_id: str) -> int | None:
        return self._seen.get(command_id)

    def record(self, command_id: str, kind: int) -> None:
        """Remember ``kind`` as the command's last event; on disk only for the kinds that
        decide what a repeat after a restart is answered with (received, activated, final):
        the steps between are redone by the interrupted-deploy resume anyway."""
        known = command_id in self._seen
        self._seen[command_id] = kind
        self._seen.move_to_end(command_id)
        while len(self._seen) > REMEMBERED_COMMANDS:
            self._seen.popitem(last=False)
        if known and kind not in PERSISTED_KINDS:
            return
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._seen))
        os.replace(tmp, self._path)


class InflightDeploy:
    """The deploy command being carried out, on disk until its final event: an agent killed
    mid-deploy (download, install, self-test, probation) finishes it after the restart
    instead of leaving the hub waiting on a command it has already acknowledged."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def begin(self, command: pb.Command) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_bytes(command.SerializeToString())
        os.replace(tmp, self._path)

    def get(self) -> pb.Command | None:
        command = pb.Command()
        try:
            command.ParseFromString(self._path.read_bytes())
        except (OSError, ValueError, RuntimeError):  # none, or damaged: nothing to resume
            return None
        return command if command.command_id and command.HasField("deploy") else None

    def finish(self, command_id: str) -> None:
        current = self.get()
        if current is None or current.command_id == command_id:
            self._path.unlink(missing_ok=True)


class Deployer:
    """Carries out commands against the slots; one deployment at a time."""

    def __init__(
        self,
        *,
        device_id: str,
        slots: SlotStore,
        trust: TrustedKey,
        work_dir: Path,
        prefer: tuple[str, ...],
        threads: int,
        probation_s: float,
        max_error_rate: float,
        host: DeployHost,
        ca_file: Path | None = None,
        client_cert_file: Path | None = None,
        client_key_file: Path | None = None,
    ) -> None:
        self._device_id = device_id
        self._ca_file = ca_file  # the hub's CA: downloads over TLS
        # the device's client certificate: presented on downloads (hubs with client certs)
        self._client_cert = (
            (client_cert_file, client_key_file) if client_cert_file and client_key_file else None
        )
        self._slots = slots
        self._trust = trust  # the bundle key: read at each use, a rotation changes it
        self._work = work_dir
        self._prefer = prefer
        self._threads = threads
        self._probation_s = probation_s
        self._max_error_rate = max_error_rate
        self._host = host
        self._lock = asyncio.Lock()
        self._log = CommandLog(work_dir / "commands.json")
        self._inflight = InflightDeploy(work_dir / "inflight_command.pb")
        self._probation: asyncio.Task[None] | None = None
        self.last_command_id = ""
        #: what this device refused or had to retry, by reason: ``repeated_command``, a foreign
        #: device id, and every failed download attempt (:func:`edge_agent._fetch.download_bundle`)
        self.rejected: Counter[str] = Counter()

    # events -------------------------------------------------------------------------------

    def _emit(self, command: pb.Command, kind: int, **fields: Any) -> None:
        body = command.WhichOneof("body")
        target = getattr(command, body) if body else None
        event = pb.DeploymentEvent(
            event_id=uuid.uuid4().hex,
            device_id=self._device_id,
            command_id=command.command_id,
            rollout_id=getattr(target, "rollout_id", ""),
            kind=kind,  # type: ignore[arg-type]
            model=fields.pop("model", getattr(target, "model", "")),
            version=fields.pop("version", getattr(target, "version", "")),
            at=int(time.time() * 1000),
            **fields,
        )
        self._host.enqueue_event(event)
        if kind != K.EVENT_KIND_DOWNLOADING:
            self._log.record(command.command_id, kind)
        if kind in FINAL_KINDS:
            self._inflight.finish(command.command_id)

    # dispatch -----------------------------------------------------------------------------

    async def handle(self, command: pb.Command) -> None:
        if command.device_id and command.device_id != self._device_id:
            log.warning("ignoring command %s for device %s", command.command_id, command.device_id)
            self.rejected["foreign_device_command"] += 1
            return
        last = self._log.last(command.command_id)
        if last is not None:  # a redelivery or a retry: acknowledge, do not act again
            self.rejected["repeated_command"] += 1
            self._emit(command, last, reason="repeated command; already handled")
            return
        self.last_command_id = command.command_id
        body = command.WhichOneof("body")
        async with self._lock:
            if body in {"deploy", "rollback"}:
                self._end_probation()
            if body == "deploy":
                await self._deploy(command)
            elif body == "rollback":
                await self._rollback(command, reason=command.rollback.reason or "requested")
            elif body == "shadow":
                await self._start_shadow(command)
            elif body == "rotate_key":
                self._rotate_key(command)
            else:
                self._emit(command, K.EVENT_KIND_RECEIVED)

    # deploy -------------------------------------------------------------------------------

    async def _fetch(self, command: pb.Command, target: Any) -> Path:
        marks = {0.25, 0.5, 0.75}

        def progress(done: int, total: int) -> None:
            if total and done >= total:  # the last chunk: DOWNLOADED says it, not a mark
                marks.clear()
            fraction = done / total if total else 1.0
            reached = {m for m in marks if fraction >= m}
            if reached:  # marks one chunk crosses together are one event (the highest)
                self._emit(command, K.EVENT_KIND_DOWNLOADING, progress=max(reached))
            marks.difference_update(reached)

        self._emit(command, K.EVENT_KIND_DOWNLOADING, progress=0.0)
        waited: list[float] = []
        path = await download_bundle(
            endpoint=target.artifact_endpoint,
            digest=target.bundle_digest,
            dest_dir=self._work / "downloads",
            expected_size=target.bundle_size or None,
            on_progress=progress,
            ca_file=self._ca_file,
            client_cert=self._client_cert,
            rejected=self.rejected,
            waited=waited,
            # a presigned object-store URL when the hub gives one; gRPC the fallback
            url=getattr(target, "bundle_url", ""),
            url_expires_at_ms=getattr(target, "bundle_url_expires_at", 0),
        )
        # the hub shows how long its download slots kept the device waiting
        why = f"waited {sum(waited):.2f} s for a download slot ({len(waited)}x)" if waited else ""
        self._emit(command, K.EVENT_KIND_DOWNLOADED, progress=1.0, reason=why)
        return path

    async def _deploy(self, command: pb.Command) -> None:
        target = command.deploy
        self._inflight.begin(command)
        self._emit(command, K.EVENT_KIND_RECEIVED)
        active = self._slots.active()
        if active is not None and active.digest == target.bundle_digest:
            self._emit(command, K.EVENT_KIND_HEALTHY, reason="already serving this bundle")
            return
        if active is not None and active.status == "probation":
            # a newer deploy ends the probation of the one before: it becomes the fallback
            self._slots.mark(active.name, "serving")
        try:
            path = await self._fetch(command, target)
            slot = await asyncio.to_thread(
                self._slots.install, path, public_key=self._trust.public_key
            )
            path.unlink(missing_ok=True)  # the verified files live in the slot now
        except (DownloadError, BundleError, SlotError, OSError) as exc:
            self._emit(command, K.EVENT_KIND_FAILED, reason=f"{type(exc).__name__}: {exc}")
            return
        self._emit(command, K.EVENT_KIND_VERIFIED)
        try:
            loaded = await asyncio.to_thread(
                load_slot, slot.path, prefer=self._prefer, threads=self._threads
            )
            report = await asyncio.to_thread(health_check, loaded)
            ok, why = report.ok, report.reason
        except (ModelLoadError, OSError, ValueError) as exc:
            ok, why = False, f"does not load: {exc}"
        if not ok:
            self._slots.mark(slot.name, "failed")
            self._emit(command, K.EVENT_KIND_FAILED, reason=f"health check: {why}")
            kept = self._slots.active()
            self._emit(
                command,
                K.EVENT_KIND_ROLLED_BACK,
                reason=f"kept the previous model ({kept.version if kept else 'none'})",
                model=kept.model if kept else "",
                version=kept.version if kept else "",
            )
            return
        self._slots.activate(slot.name, status="probation")
        self._host.serve(loaded)
        self._emit(command, K.EVENT_KIND_ACTIVATED)
        probation = target.probation_seconds if target.HasField("probation_seconds") else None
        seconds = self._probation_s if probation is None else probation
        self._probation = asyncio.create_task(self._watch(command, seconds=seconds))

    def _end_probation(self) -> None:
        if self._probation is not None and not self._probation.done():
            self._probation.cancel()
        self._probation = None

    async def wait_probation(self) -> None:
        """For tests and shutdown: until the current probation has been decided."""
        if self._probation is not None:
            await asyncio.gather(self._probation, return_exceptions=True)

    async def _watch(self, command: pb.Command, *, seconds: float) -> None:
        """Probation: too many errors while it lasts and the agent rolls back by itself."""
        errors0, count0 = self._host.prediction_counts()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
            errors, count = self._host.prediction_counts()
            errors, count = errors - errors0, count - count0
            if errors >= 3 and errors / max(count, 1) > self._max_error_rate:
                async with self._lock:
                    await self._rollback(
                        command,
                        reason=f"probation failed: {errors} errors in {count} predictions",
                        fail_current=True,
                    )
                return
        active = self._slots.active()
        if active is not None:
            self._slots.mark(active.name, "serving")
        self._emit(command, K.EVENT_KIND_HEALTHY)

    async def rollback_after_crash(self) -> None:
        """At start: the active model was still on probation when the agent died. The
        rollback answers the interrupted deploy's own command when it is known."""
        command = self._inflight.get() or pb.Command(
            command_id=f"local-{uuid.uuid4().hex}", device_id=self._device_id
        )
        await self._rollback(
            command, reason="the agent restarted during probation", fail_current=True
        )

    async def resume_interrupted(self) -> None:
        """At start (after any probation rollback): carry out a deploy the agent was killed
        in the middle of, with the same command id (the download resumes from its offset)."""
        command = self._inflight.get()
        if command is None:
            return
        log.warning("resuming deploy %s interrupted by a restart", command.command_id)
        self.last_command_id = command.command_id
        async with self._lock:
            await self._deploy(command)

    async def _rollback(
        self, command: pb.Command, *, reason: str, fail_current: bool = False
    ) -> None:
        current = self._slots.active()
        try:
            slot = self._slots.rollback()
            loaded = await asyncio.to_thread(
                load_slot, slot.path, prefer=self._prefer, threads=self._threads
            )
        except (SlotError, ModelLoadError, OSError, ValueError) as exc:
            self._emit(command, K.EVENT_KIND_FAILED, reason=f"rollback impossible: {exc}")
            return
        self._host.serve(loaded)
        self._slots.mark(slot.name, "serving")
        if fail_current and current is not None:  # never switch back to a rejected model
            self._slots.mark(current.name, "failed")
        self._emit(
            command, K.EVENT_KIND_ROLLED_BACK, reason=reason, model=slot.model, version=slot.version
        )

    # key rotation -------------------------------------------------------------------------

    def _rotate_key(self, command: pb.Command) -> None:
        """Trust the new bundle key when the command is signed by the trusted one (see
        edge_agent._trust); HEALTHY when done or already done, FAILED with why if not."""
        self._emit(command, K.EVENT_KIND_RECEIVED)
        try:
            changed = self._trust.rotate(command)
        except RotationRefused as exc:
            log.warning("refused key rotation %s: %s", command.command_id, exc)
            self._emit(command, K.EVENT_KIND_FAILED, reason=f"key rotation refused: {exc}")
            return
        except OSError as exc:  # the new key could not be stored: keep the old one
            self._emit(command, K.EVENT_KIND_FAILED, reason=f"key rotation not stored: {exc}")
            return
        self._emit(
            command,
            K.EVENT_KIND_HEALTHY,
            reason=f"{'now trusting' if changed else 'already trusting'} {self._trust.key_id}",
        )

    # shadow -------------------------------------------------------------------------------

    async def _start_shadow(self, command: pb.Command) -> None:
        target = command.shadow
        self._emit(command, K.EVENT_KIND_RECEIVED)
        if target.stop:
            self._host.set_shadow(None, 0.0)
            self._emit(command, K.EVENT_KIND_HEALTHY, reason="shadow stopped")
            return
        try:
            path = await self._fetch(command, target)
            directory = self._work / "shadow" / target.bundle_digest.removeprefix("sha256:")
            bundle = open_bundle(path, public_key=self._trust.public_key)
            await asyncio.to_thread(bundle.extract_to, directory)
            (directory / "manifest.json").write_bytes(bundle.manifest_bytes)
            loaded = await asyncio.to_thread(
                load_slot, directory, prefer=self._prefer, threads=self._threads
            )
        except (DownloadError, BundleError, ModelLoadError, OSError, ValueError) as exc:
            self._emit(command, K.EVENT_KIND_FAILED, reason=f"{type(exc).__name__}: {exc}")
            return
        self._emit(command, K.EVENT_KIND_VERIFIED)
        self._host.set_shadow(loaded, target.sample_fraction or 1.0)
        self._emit(command, K.EVENT_KIND_ACTIVATED, reason="shadow")
