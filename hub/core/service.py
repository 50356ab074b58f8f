"""The shape of every long-running part of ``hub serve``: start, stop, health.

:class:`Service` is the protocol the composition root (:mod:`hub.serve`) starts in order and
stops in reverse; :class:`Periodic` is the background thread most services are made of (call
``tick`` every ``interval_s``; a failing tick is logged and retried next time, never fatal).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from hub.core.clock import utcnow
from hub.core.redact import redact_text

__all__ = ["Gate", "Owning", "Periodic", "Service", "ServiceHealth"]

#: How often a gated service that stands by looks whether it now holds the gate.
GATE_POLL_S = 0.5
#: What :meth:`Service.health` returns: JSON-ready facts, ``running`` always among them.
ServiceHealth = dict[str, Any]


@runtime_checkable
class Service(Protocol):
    """A part of the hub that runs in the background between :meth:`start` and :meth:`stop`."""

    name: str

    def start(self) -> object:
        """Start in the background and return (what it returns is not used)."""

    def stop(self) -> None:
        """Stop and release what it holds; called once, in reverse order of start."""

    def health(self) -> ServiceHealth:
        """JSON-ready facts for ``/healthz``; ``running`` among them."""


class Gate(Protocol):
    """Whether this process may do a singleton's work now: a :class:`Periodic` with a
    ``gate`` ticks only while it is held (``hub.cluster.member.Lease`` implements it: a lease
    among several hub replicas on one database)."""

    name: str

    def held(self) -> bool: ...


class Owning:
    """``service`` plus what it owns (an engine, a client): each closer runs after it stops."""

    def __init__(self, service: Service, *closers: Callable[[], object]) -> None:
        self.service, self.name, self._closers = service, service.name, closers

    def start(self) -> None:
        self.service.start()

    def stop(self) -> None:
        self.service.stop()
        for close in self._closers:
            close()

    def health(self) -> ServiceHealth:
        return self.service.health()


class Periodic:
    """The base of the hub's tick services: a daemon thread calls :meth:`tick` every
    ``interval_s`` from :meth:`start` until :meth:`stop`; a subclass sets ``name`` and
    implements ``tick``.

    ``fixed_rate``: the interval runs from the start of one tick to the next (a tick longer
    than the interval is followed at once); otherwise it is the pause after each tick.
    ``first_after_s``: the wait before the first tick. :meth:`wake` runs the next tick now.
    ``gate``: when set, a tick runs only while it is held (otherwise the service stands by,
    counted in ``standby_ticks``).
    A failing tick (a database hiccup, a broker away) is logged as "<what> failed", counted
    in ``failures`` and tried again at the next one; a tick longer than ``slow_s`` is logged.
    """

    name = "periodic"

    def __init__(
        self,
        *,
        interval_s: float,
        log: logging.Logger,
        thread_name: str,
        fixed_rate: bool = False,
        first_after_s: float = 0.0,
        slow_s: float | None = None,
        what: str = "tick",
    ) -> None:
        self.interval_s = interval_s
        self._log, self._what, self._slow_s = log, what, slow_s
        self._fixed_rate, self._first = fixed_rate, first_after_s
        self._stop_event = threading.Event()
        self._wake_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.ticks = 0
        self.failures = 0
        self.last_tick_at: datetime | None = None
        self.last_error: str | None = None
        self.gate: Gate | None = None
        self.standby_ticks = 0

    def tick(self) -> object:
        """One pass of the service's work."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_event.set()
        self._wake_event.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake_event.set()

    def health(self) -> ServiceHealth:
        gate = {} if self.gate is None else {"lease": self.gate.name, "leader": self.gate.held()}
        return {
            **gate,
            "running": self._thread.is_alive(),
            "interval_s": self.interval_s,
            "ticks": self.ticks,
            "failures": self.failures,
            "last_tick_at": self.last_tick_at.isoformat() if self.last_tick_at else None,
            "last_error": self.last_error,
        }

    def _pause(self, seconds: float) -> None:
        self._wake_event.wait(max(0.0, seconds))
        self._wake_event.clear()

    def _run(self) -> None:
        if self._first > 0:
            self._pause(self._first)
        while not self._stop_event.is_set():
            started = time.monotonic()
            if self.gate is not None and not self.gate.held():  # another replica leads
                self.standby_ticks += 1
                self._pause(min(self.interval_s, GATE_POLL_S))
                continue
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:  # a database hiccup or a bad row: try again next time
                self.failures += 1
                self.last_error = redact_text(f"{type(exc).__name__}: {exc}")
                self._log.exception("%s failed", self._what)
            took = time.monotonic() - started
            if self._slow_s is not None and took > self._slow_s:
                self._log.warning("%s took %.1f s", self._what, took)
            self.ticks += 1
            self.last_tick_at = utcnow()
            if self._stop_event.is_set():
                break
            self._pause(self.interval_s - (took if self._fixed_rate else 0.0))
