"""The edge agent: one async context manager that keeps a device's model current and observed.

    settings = AgentSettings(device_id="cam-1", public_key=Path("hub.pub"))
    async with Agent(settings=settings) as agent:
        prediction = agent.predict(frame)      # in-process inference API
        await agent.wait_stopped()             # or run until agent.stop()

It owns the MQTT session (commands in; state, events, telemetry, feedback out), the two
model slots, the predictor, telemetry windows and the durable outbound queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from typing import Any

import numpy as np

from edge_agent._deploy import Deployer
from edge_agent._feedback import FeedbackBuffer
from edge_agent._handoff import Handoff, record_calls
from edge_agent._http import LocalApi
from edge_agent._predictor import Prediction, Predictor, ShadowReport
from edge_agent._recent import RecentPredictions
from edge_agent._runtime import LoadedModel, load_slot
from edge_agent._session import MqttSession
from edge_agent._slots import SlotInfo, SlotStore
from edge_agent._telemetry import WindowAggregator
from edge_agent._trust import TrustedKey
from edge_agent.queue import OutboundQueue
from edge_agent.settings import AgentSettings, shown_url
from proto import messages_pb2 as pb
from proto.topics import Topics

log = logging.getLogger("edgeloop.agent")

AGENT_VERSION = "0.1.0"
PENDING_LIMIT = 100_000  # calls waiting for the telemetry tick
AGGREGATE_CHUNK = 2_000  # calls the tick aggregates between two GIL hand-overs
PREDICTIONS_HELD = 10_000  # recent predictions whose output feedback labels can carry
_SLOT_STATUS = {
    "ready": pb.SLOT_STATUS_READY,
    "serving": pb.SLOT_STATUS_SERVING,
    "probation": pb.SLOT_STATUS_PROBATION,
    "failed": pb.SLOT_STATUS_FAILED,
}


class Agent:
    """A device's agent; see the module docstring."""

    def __init__(self, *, settings: AgentSettings) -> None:
        self.settings = settings
        self.device_dir = settings.device_dir
        self.device_dir.mkdir(parents=True, exist_ok=True)
        self.topics = Topics(prefix=settings.topic_prefix, fleet=settings.fleet)
        assert settings.public_key is not None  # the settings refuse to exist without one
        # the bundle key: the configured one, or the one a RotateKey replaced it with
        self.trust = TrustedKey(
            configured=settings.public_key, device_dir=self.device_dir, device_id=settings.device_id
        )
        self.queue = OutboundQueue(
            self.device_dir / "outbound.db", max_bytes=settings.queue_max_bytes
        )
        self.slots = SlotStore(self.device_dir)
        self.predictor = Predictor(device_id=settings.device_id)
        self._lock = threading.Lock()
        self._window: WindowAggregator | None = None
        self._feedback = FeedbackBuffer(device_id=settings.device_id)
        self._recent = RecentPredictions(capacity=PREDICTIONS_HELD)
        # the calls the predictor hands over, waiting for the telemetry tick (bounded)
        self._handoff = Handoff(recent=self._recent, limit=PENDING_LIMIT)
        self._model: LoadedModel | None = None
        self._stop = asyncio.Event()
        self._stopping: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._api: LocalApi | None = None
        self.session = MqttSession(
            settings=settings,
            topics=self.topics,
            queue=self.queue,
            on_command=self._on_command,
            state=self._state_payload,
        )
        self.deployer = Deployer(
            device_id=settings.device_id,
            slots=self.slots,
            trust=self.trust,
            work_dir=self.device_dir,
            prefer=tuple(settings.prefer),
            threads=settings.threads,
            probation_s=settings.probation_s,
            max_error_rate=settings.probation_max_error_rate,
            host=self,  # the agent is the DeployHost: see serve, set_shadow, enqueue_event
            ca_file=settings.ca_file,
            client_cert_file=settings.client_cert_file,
            client_key_file=settings.client_key_file,
        )
        self.predictor.set_sink(self._handoff.sink)
        self.predict = self.predictor.predict  # type: ignore[method-assign]
        self.predictor.add_shadow_observer(self._observe_shadow)
        self.malformed_commands = 0
        # windows that closed but could not be queued (a full disk): reported in the next
        # window's dropped_windows, like the queue's own evictions
        self.unqueued_windows = 0

    # lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        log.info(
            "agent %s: state in %s, broker %s",
            self.settings.device_id,
            self.device_dir,
            shown_url(self.settings.mqtt_url),
        )
        await asyncio.to_thread(self.slots.recover)
        active = self.slots.active()
        if active is not None:
            try:
                self.serve(await asyncio.to_thread(self._load, active))
            except Exception:
                log.exception("the active model in slot %s does not load", active.name)
            if active.status == "probation":
                await self.deployer.rollback_after_crash()
        if self.settings.http_port is not None:
            self._api = LocalApi(
                predictor=self.predictor,
                on_feedback=self.feedback,
                port=self.settings.http_port,
                status=lambda: {
                    "delivery": self.session.delivery_stats(),
                    "mqtt": self.session.connection_stats(),
                    "rejected": self.rejected(),
                },
            )
            self._api.start()
        self._tasks = [
            asyncio.create_task(self.session.run(self._stop)),
            asyncio.create_task(self._tick()),
            asyncio.create_task(self.deployer.resume_interrupted()),  # a deploy cut by a kill
        ]

    async def stop(self) -> None:
        """Stop and return once stopped; every caller waits for the one shutdown (a signal
        handler's ``stop()`` and the ``async with`` exit: the offline state goes out first)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._stopping)

    async def _shutdown(self) -> None:
        self._stop.set()
        self._flush(force=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._api is not None:
            self._api.stop()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    @property
    def http_port(self) -> int | None:
        return self._api.port if self._api is not None else None

    # inference API ------------------------------------------------------------------------

    def predict(self, raw: np.ndarray) -> Prediction:
        """Run the active model on raw records (one record or a batch)."""
        return self.predictor.predict(raw)  # rebound in __init__ to skip this frame

    def feedback(
        self,
        *,
        prediction_id: str,
        label: int | None = None,
        value: float | None = None,
        source: str = "",
    ) -> None:
        """Ground truth for an earlier prediction; forwarded to the hub on its own topic.

        While the agent still holds the prediction (the last ``PREDICTIONS_HELD``), the label
        carries what was predicted and by which model version; else the serving model's.
        ``source`` names the record the input was drawn from, when the caller knows it (records
        of one source share a dataset split at the hub: no model is scored on its training
        sources)."""
        self._aggregate_pending()  # the prediction may still wait for the telemetry tick
        held = self._recent.get(prediction_id)
        model = self._model
        with self._lock:
            if held is not None:
                name, version = held.model, held.version
            else:
                name = str(model.manifest.get("name", "")) if model else ""
                version = str(model.manifest.get("version", "")) if model else ""
            self._feedback.add(
                prediction_id=prediction_id,
                label=label,
                value=value,
                model=name,
                version=version,
                predicted_label=held.label if held is not None else None,
                predicted_value=held.value if held is not None else None,
                source=source,
            )

    # commands and state -------------------------------------------------------------------

    async def _on_command(self, payload: bytes) -> None:
        command = pb.Command()
        try:
            command.ParseFromString(payload)
        except Exception as exc:  # protobuf raises DecodeError (and friends) on garbage
            self.malformed_commands += 1
            log.warning("dropping a malformed command (%d bytes): %s", len(payload), exc)
            return
        if not command.command_id:
            self.malformed_commands += 1
            log.warning("dropping a command without command_id")
            return
        await self.deployer.handle(command)
        self.session.state_changed()

    def rejected(self) -> dict[str, int]:
        """Refused or retried input by reason (health endpoint); see ``Deployer.rejected``."""
        return {"malformed_commands": self.malformed_commands, **self.deployer.rejected}

    def _slot_state(self, slot: SlotInfo | None) -> pb.SlotState:
        if slot is None:
            return pb.SlotState(status=pb.SLOT_STATUS_EMPTY)
        return pb.SlotState(
            model=slot.model,
            version=str(slot.version),
            bundle_digest=slot.digest,
            status=_SLOT_STATUS.get(slot.status, pb.SLOT_STATUS_UNSPECIFIED),
        )

    def _state_payload(self, online: bool) -> bytes:
        model = self._model
        runtime = model.runtime.name if model is not None else ""
        state = pb.AgentState(
            device_id=self.settings.device_id,
            online=online,
            agent_version=AGENT_VERSION,
            active=self._slot_state(self.slots.active()),
            standby=self._slot_state(self.slots.standby()),
            runtime=runtime,
            free_disk_bytes=shutil.disk_usage(self.device_dir).free,
            updated_at=int(time.time() * 1000),
            last_command_id=self.deployer.last_command_id,
            capabilities=self.settings.capabilities,
            bundle_key_id=self.trust.key_id,
        )
        return state.SerializeToString()

    # models -------------------------------------------------------------------------------

    def _load(self, slot: SlotInfo) -> LoadedModel:
        return load_slot(
            slot.path, prefer=tuple(self.settings.prefer), threads=self.settings.threads
        )

    def serve(self, model: LoadedModel) -> None:
        """Make ``model`` (loaded from a slot) the one that answers predictions; the
        deployer's hook (:class:`~edge_agent._deploy.DeployHost`), also used at start."""
        self._flush(force=True)  # the old model's window closes with the old model
        manifest = model.manifest
        active = self.slots.active()
        digest = active.digest if active is not None and active.path == model.slot_dir else ""
        with self._lock:
            self._model = model
            self._window = self._aggregator(model, manifest, digest)
        self.predictor.swap(model)
        self.session.state_changed()

    def _aggregator(
        self, model: LoadedModel, manifest: dict[str, Any], digest: str
    ) -> WindowAggregator | None:
        try:
            return WindowAggregator(
                device_id=self.settings.device_id,
                model=str(manifest.get("name", "")),
                version=str(manifest.get("version", "")),
                bundle_digest=digest,
                profile=manifest.get("reference_profile", {}),
                task="reconstruction" if model.task == "reconstruction" else "classification",
                window_s=self.settings.telemetry_window_s,
                max_predictions=self.settings.telemetry_max_predictions,
                reservoir_size=self.settings.reservoir_size,
            )
        except (ValueError, KeyError) as exc:
            log.error("no telemetry for %s: bad reference profile (%s)", model.slot_dir, exc)
            return None

    def set_shadow(self, model: LoadedModel | None, fraction: float) -> None:
        """Also run ``model`` on a sampled ``fraction`` of the calls (``None`` stops)."""
        self.predictor.set_shadow(model, fraction=fraction)

    def prediction_counts(self) -> tuple[int, int]:
        """``(errors, calls)`` of the predictor so far (the deployer's probation watch)."""
        return self.predictor.errors, self.predictor.count

    # telemetry ----------------------------------------------------------------------------

    @property
    def unremembered(self) -> int:
        """Calls whose output could not be remembered for feedback labels."""
        return self._handoff.unremembered

    def _aggregate_pending(self) -> None:
        """Drain the calls the predictor handed over (:mod:`edge_agent._handoff`): remember
        what they predicted (for feedback), and record the current model's calls in the
        telemetry window. Runs in the tick thread but holds the GIL: whole-batch numpy
        work, no per-call array calls, in chunks of ``AGGREGATE_CHUNK`` calls with the GIL
        handed over between them (a prediction that finished ``session.run`` meanwhile
        waits for one chunk, not for the switch interval)."""
        remaining = len(self._handoff.sink)  # what is pending now: the loop ends
        while remaining > 0:
            with self._lock:
                groups = self._handoff.drain(max_calls=min(remaining, AGGREGATE_CHUNK))
                window, current = self._window, self._model
                if window is not None and current is not None:
                    for calls in groups:  # one per model: a deploy may switch mid-tick
                        if calls.served_by is current:
                            record_calls(window, calls)
            taken = sum(len(calls.n) for calls in groups)
            if not taken:
                return
            remaining -= taken
            if remaining > 0:
                time.sleep(0)  # the GIL to a waiting prediction

    def _observe_shadow(self, report: ShadowReport) -> None:
        shadow = report.shadow.manifest
        with self._lock:
            if self._window is not None:
                self._window.record_shadow(
                    compared=report.compared,
                    agreed=report.agreed,
                    errors=report.errors,
                    latency_delta_ms=report.latency_delta_ms,
                    model=str(shadow.get("name", "")),
                    version=str(shadow.get("version", "")),
                    bundle_digest=str(report.shadow.slot_dir.name),
                )

    def enqueue_event(self, event: pb.DeploymentEvent) -> None:
        """Queue a deployment event for the hub, durably, with the stream's next seq."""

        def payload_for(seq: int) -> bytes:
            event.seq = seq  # what the hub's DeliveryAck names
            return event.SerializeToString()

        self.queue.append(stream="events", payload_for=payload_for)
        self.session.wake()

    def flush(self) -> None:
        """Close the current telemetry window and feedback batch now (they queue durably)."""
        self._flush(force=True)

    def _flush(self, *, force: bool) -> None:
        """Close a due window (or all, ``force``) into the durable queue."""
        self._aggregate_pending()
        with self._lock:
            window = self._window
            if window is not None and not window.empty() and (force or window.due()):
                closed = window.close(seq=1)  # the real seq is set in the queue transaction

                def telemetry(seq: int) -> bytes:
                    closed.seq = seq
                    closed.dropped_windows = (
                        self.queue.take_dropped("telemetry") + self.unqueued_windows
                    )
                    return closed.SerializeToString()

                try:
                    self.queue.append(stream="telemetry", payload_for=telemetry)
                except Exception:
                    self.unqueued_windows += 1  # this window is lost: say so in the next one
                    raise
                self.unqueued_windows = 0
                self.session.wake()
            if not self._feedback.empty() and (force or self._feedback.due()):
                labels = self._feedback.close(seq=1)

                def feedback(seq: int) -> bytes:
                    labels.seq = seq
                    return labels.SerializeToString()

                try:
                    self.queue.append(stream="feedback", payload_for=feedback)
                except Exception:  # accepted labels are never dropped: retry them later
                    self._feedback.restore(labels)
                    raise
                self.session.wake()

    async def _tick(self) -> None:
        while not self._stop.is_set():
            try:
                self._flush(force=False)
            except Exception:  # a full disk or a bad window must not stop the agent
                log.exception("could not queue telemetry")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.telemetry_tick_s):
                    await self._stop.wait()
