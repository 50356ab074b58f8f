"""Alerts as events on MQTT: ``<prefix>/<fleet>/hub/alerts``, JSON, QoS 1, not retained."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from hub.mqtt.target import MqttTarget

log = logging.getLogger("edgeloop.monitor")


def alerts_topic(*, prefix: str, fleet: str) -> str:
    from proto.topics import Topics

    return f"{Topics(prefix=prefix, fleet=fleet).base}/hub/alerts"


class MqttAlertPublisher:
    """A paho client in its own network thread; reconnects by itself. Messages published
    while the broker is away wait in paho's queue (QoS 1) until it is back."""

    def __init__(self, *, url: str, topic: str, client_id: str = "edgeloop-hub-monitor") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        target = MqttTarget.from_url(url)
        self.topic = topic
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        target.configure(self._client)  # login, and TLS for mqtts://
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._connected = threading.Event()
        self._client.on_connect = lambda *_a, **_k: self._connected.set()
        self._client.connect_async(target.host, target.port, keepalive=30)
        self._client.loop_start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def publish_alert(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message, default=str).encode()
        info = self._client.publish(self.topic, payload, qos=1, retain=False)
        if info.rc != 0:
            log.warning("alert not queued for MQTT (rc=%s)", info.rc)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
