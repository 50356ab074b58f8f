"""Publishing commands to devices: one paho client, QoS 1, wait for the broker's PUBACK."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

import paho.mqtt.client as mqtt

from hub.core.errors import EdgeloopError
from hub.mqtt.target import MqttTarget
from proto import messages_pb2 as pb
from proto.topics import Topics

log = logging.getLogger("edgeloop.rollouts.publisher")


MAX_INFLIGHT = 1000


class PublishError(EdgeloopError, RuntimeError):
    """The broker did not acknowledge a command (not connected, or no PUBACK in time)."""

    code = "broker_unavailable"
    status = 503


class CommandPublisher:
    """A connected MQTT client that publishes ``Command`` messages and waits for PUBACK."""

    def __init__(
        self, *, mqtt_url: str, topics: Topics, client_id: str = "", timeout_s: float = 10.0
    ) -> None:
        self._target = MqttTarget.from_url(mqtt_url)
        self._topics = topics
        self._timeout = timeout_s
        self._connected = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeloop-rollouts-{uuid.uuid4().hex[:8]}",
            clean_session=True,
        )
        self._target.configure(self._client)  # login, and TLS for mqtts://
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        # a batch of commands goes out at once (paho's default holds back all but 20 until
        # earlier PUBACKs arrive)
        self._client.max_inflight_messages_set(MAX_INFLIGHT)

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker refused the rollout publisher: %s", reason)
            return
        self._connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def start(self) -> None:
        self._client.connect_async(self._target.host, self._target.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, command: pb.Command) -> None:
        """Publish to the device's command topic; returns after PUBACK or raises."""
        _, error = self.publish_many([command])
        if error is not None:
            raise error

    def publish_many(self, commands: Sequence[pb.Command]) -> tuple[int, PublishError | None]:
        """Publish all ``commands`` at once (QoS 1), then wait for their PUBACKs.

        Returns ``(n, error)``: the first ``n`` commands were acknowledged by the broker
        (in order); ``error`` says why the next one was not (``None``: all were). One round
        trip for a batch instead of one per command; what counts as published is still
        only what the broker acknowledged.
        """
        if not commands:
            return 0, None
        if not self._connected.wait(self._timeout):
            return 0, PublishError(f"not connected to the broker at {self._target!r}")
        infos: list[mqtt.MQTTMessageInfo] = []
        failed: Exception | None = None
        for command in commands:
            try:
                infos.append(
                    self._client.publish(
                        self._topics.command(command.device_id),
                        command.SerializeToString(),
                        qos=1,
                    )
                )
            except (RuntimeError, ValueError) as exc:
                failed = exc
                break
        deadline = time.monotonic() + self._timeout
        for n, info in enumerate(infos):
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            except (RuntimeError, ValueError) as exc:
                return n, PublishError(f"publish failed: {exc}")
            if not info.is_published():
                return n, PublishError(f"no PUBACK within {self._timeout:g} s")
        if failed is not None:
            return len(infos), PublishError(f"publish failed: {failed}")
        return len(infos), None
