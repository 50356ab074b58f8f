"""Publishing commands to devices: one paho client, QoS 1, wait for the broker's PUBACK."""

from __future__ import annotations

import logging
import threading
import uuid

import paho.mqtt.client as mqtt

from hub.mqtt import MqttTarget
from proto import messages_pb2 as pb
from proto.topics import Topics

log = logging.getLogger("edgeloop.rollouts.publisher")


class PublishError(RuntimeError):
    """The broker did not acknowledge a command (not connected, or no PUBACK in time)."""


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
        if not self._connected.wait(self._timeout):
            raise PublishError(f"not connected to the broker at {self._target!r}")
        info = self._client.publish(
            self._topics.command(command.device_id), command.SerializeToString(), qos=1
        )
        try:
            info.wait_for_publish(self._timeout)
        except (RuntimeError, ValueError) as exc:
            raise PublishError(f"publish failed: {exc}") from exc
        if not info.is_published():
            raise PublishError(f"no PUBACK within {self._timeout:g} s")
