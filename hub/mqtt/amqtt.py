"""amqtt as the embedded broker's fallback: a Broker on its own event loop in a thread.

Demo only (see hub/mqtt/broker.py): anonymous access, MQTT 3.1.1, no ``$share``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from hub.mqtt.net import BrokerError

_AMQTT_AUTH = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}


class AmqttThread:
    """An amqtt Broker on its own event loop in a daemon thread."""

    def __init__(self, *, host: str, port: int) -> None:
        self._bind = f"{host}:{port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"amqtt-{port}", daemon=True)
        self._broker: Any = None

    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._broker is not None

    def start(self, timeout: float) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            future.result(timeout)
        except Exception as exc:
            self.stop(2.0)
            raise BrokerError(f"amqtt did not start on {self._bind}: {exc}") from exc

    async def _start(self) -> None:
        from amqtt.broker import Broker  # lazily: a hub extra, not needed with Mosquitto

        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": self._bind}},
                "timeout_disconnect_delay": 0,
                "plugins": _AMQTT_AUTH,
            }
        )
        await broker.start()
        self._broker = broker

    def stop(self, timeout: float) -> None:
        if not self._thread.is_alive():
            return  # (the loop is closed by _run)
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_quiet_cancellations)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """amqtt's connection tasks, cancelled at shutdown, are not errors worth a traceback."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)
