"""One simulated device: a real :class:`edge_agent.agent.Agent` fed by a sensor stream.

The device predicts ``batch`` records ``rate_hz`` times a second once its agent serves a
model, labels a ``coverage`` share of the predictions ``delay_s`` later through the agent's
feedback API, and can be restarted (churn): the agent's context is left and a new agent is
started on the same disk state (slots, queue, sequence numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent import NoModelLoaded
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from simulators.scenario import FeedbackSpec, GroupSpec
from simulators.sensors import SensorStream

log = logging.getLogger("edgeloop.sim.device")


@dataclass
class DeviceCounters:
    predictions: int = 0  # predict calls that returned
    records: int = 0  # records predicted
    predict_errors: int = 0
    no_model: int = 0  # ticks skipped while no model was served
    labels: int = 0  # feedback labels handed to the agent
    restarts: int = 0


class SimDevice:
    """See the module docstring. ``settings`` is fixed for the device's life (its identity)."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        group: GroupSpec,
        stream: SensorStream,
        rate_hz: float,
        batch: int,
        feedback: FeedbackSpec,
        elapsed: Callable[[], float],
        rng: np.random.Generator,
        drifted: bool = False,
    ) -> None:
        self.settings = settings
        self.device_id = settings.device_id
        self.group = group
        self.stream = stream
        self.period = 1.0 / rate_hz
        self.batch = batch
        self.feedback_spec = feedback
        self.drifted = drifted
        self.counters = DeviceCounters()
        self.agent: Agent | None = None
        self._elapsed = elapsed
        self._rng = rng
        self._task: asyncio.Task[None] | None = None
        self._last_seqs: dict[str, int] = {}
        self._dropped = 0
        self.left = False
        self.paused = False  # the sensor stops producing (the agent keeps running)

    @property
    def running(self) -> bool:
        return self.agent is not None

    @property
    def connected(self) -> bool:
        return self.agent is not None and self.agent.session.stats.connected

    @property
    def serving(self) -> bool:
        return self.agent is not None and self.agent.predictor.model is not None

    async def start(self) -> None:
        if self.agent is not None:
            return
        agent = Agent(settings=self.settings)
        await agent.start()
        self.agent = agent
        self._task = asyncio.create_task(self._run(), name=f"sim:{self.device_id}")

    async def stop(self) -> None:
        """Leave the agent's context (a clean shutdown) and release its files."""
        agent, self.agent = self.agent, None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if agent is None:
            return
        await agent.stop()
        self._last_seqs = agent.queue.last_seqs()
        self._dropped = agent.queue.dropped()
        agent.queue.close()

    async def restart(self, *, down_s: float = 0.0) -> None:
        await self.stop()
        if down_s:
            await asyncio.sleep(down_s)
        await self.start()
        self.counters.restarts += 1

    # what the device produced ---------------------------------------------------------------

    def last_seqs(self) -> dict[str, int]:
        """The last sequence number handed out per stream (``events``, ``telemetry``,
        ``feedback``): every number from 1 to it was produced by this device."""
        return self.agent.queue.last_seqs() if self.agent is not None else dict(self._last_seqs)

    def dropped(self) -> int:
        """Messages the device's queue evicted over its disk budget (never sent)."""
        return self.agent.queue.dropped() if self.agent is not None else self._dropped

    def pending(self) -> int:
        """Messages still waiting in the device's queue."""
        return len(self.agent.queue) if self.agent is not None else 0

    # the sensor loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + float(self._rng.uniform(0, self.period))
        slow = self.group.slow_cpu_ms / 1000.0
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += self.period
            if due < loop.time() - 5 * self.period:  # far behind: skip, don't burst
                due = loop.time() + self.period
            agent = self.agent
            if agent is None:
                return
            if self.paused:
                continue
            try:
                self._predict_once(agent, loop)
            except Exception:  # one bad step never stops the device
                self.counters.predict_errors += 1
                log.exception("%s: sensor step failed", self.device_id)
            if slow:
                await asyncio.sleep(slow)

    def _predict_once(self, agent: Agent, loop: asyncio.AbstractEventLoop) -> None:
        model = agent.predictor.model
        if model is None:
            self.counters.no_model += 1
            return
        reading = self.stream.draw(self.batch, elapsed_s=self._elapsed())
        x, y = reading.features, reading.labels
        raw_shape = tuple(model.preprocess.raw_shape)
        if x.shape[1:] != raw_shape and x[0].size == math.prod(raw_shape):
            x = x.reshape(len(x), *raw_shape)  # flat records for an image model, or back
        try:
            prediction = agent.predict(x)
        except NoModelLoaded:
            self.counters.no_model += 1
            return
        except Exception as exc:
            self.counters.predict_errors += 1
            level = logging.WARNING if self.counters.predict_errors == 1 else logging.DEBUG
            log.log(level, "%s: predict failed: %s", self.device_id, exc)
            return
        self.counters.predictions += 1
        self.counters.records += len(prediction.ids)
        coverage = self.feedback_spec.coverage
        if y is None or coverage <= 0:
            return
        chosen = self._rng.random(len(prediction.ids)) < coverage
        sources = [""] * len(y) if reading.sources is None else reading.sources.tolist()
        for pid, label, source, take in zip(
            prediction.ids, y.tolist(), sources, chosen.tolist(), strict=True
        ):
            if take:
                delay = self.feedback_spec.delay_s
                loop.call_later(delay, self._label, pid, int(label), source)

    def _label(self, prediction_id: str, label: int, source: str = "") -> None:
        agent = self.agent
        if agent is None:  # the device is down: its operator's label is lost with it
            return
        try:
            agent.feedback(prediction_id=prediction_id, label=label, source=source)
            self.counters.labels += 1
        except Exception as exc:
            log.warning("%s: feedback refused: %s", self.device_id, exc)
