"""Ingest counters and a rate-limited logger for the reasons messages are turned away."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(kw_only=True)
class IngestStats:
    """What one worker has seen since it started.

    ``received`` counts every message delivered to it (repeats included); each one ends up
    in exactly one of ``stored``, ``duplicates`` or ``rejected[reason]`` once its batch is
    committed (``pending`` until then).
    """

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    batches: int = 0
    store_retries: int = 0
    connects: int = 0
    connected: bool = False
    acks_published: int = 0  # DeliveryAck messages sent to devices (hub.ingest._acks)
    decode_restarts: int = 0  # decode process (decode_process=True) restarted after dying

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def copy(self) -> IngestStats:
        return IngestStats(**{**asdict(self), "rejected": dict(self.rejected)})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rejected_total": self.rejected_total}


class RateLimitedLog:
    """Logs at most one line per key every ``every_s`` seconds, with the count it held back."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._every, self._clock = logger, every_s, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._last.get(key, -float("inf")) < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" (+{held} more like it since the last report)" if held else ""
        self._log.warning(message + suffix, *args)
