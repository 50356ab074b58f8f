"""Run an action once per burst of requests, on a background thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Debouncer:
    """``request()`` is cheap; ``action`` runs ``delay_s`` after the first request of a burst.

    Requests that arrive while the action is waiting join it; one that arrives while it runs
    schedules one more run. A failing action is logged and counted, never raised.
    """

    def __init__(self, action: Callable[[], None], *, delay_s: float, name: str) -> None:
        self._action = action
        self._delay = delay_s
        self._cond = threading.Condition()
        self._pending = False
        self._running = False
        self._closed = False
        self.runs = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> None:
        """Block until no run is pending or running (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending or self._running) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def close(self) -> None:
        """Run what is pending, then stop the thread."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(self._delay)  # gather the rest of the burst
            with self._cond:
                self._pending = False
                self._running = True
            try:
                self._action()
                self.runs += 1
            except Exception:
                self.failures += 1
                log.exception("%s failed; the next request retries", self._thread.name)
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
