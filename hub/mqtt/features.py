"""What an external MQTT broker offers the hub, told (``EDGELOOP_MQTT_BROKER``) or probed.

The hub and the agent need little of a broker: MQTT 3.1.1, QoS 0/1 (nothing publishes or
subscribes at QoS 2), persistent sessions (clean session off) and retained messages with a
last will. Two things are optional and change what the hub does:

- **MQTT 5**: only the shared ingest subscription uses it (``$share`` with the session
  expiry of MQTT 5); every other hub client and the agent speak 3.1.1 by default.
- **Shared subscriptions** (``$share/<group>/<filter>``): ``EDGELOOP_INGEST_SHARED`` splits
  the ingest over several workers with them. A broker without them takes
  ``$share/hub/...`` as a literal topic that nothing is ever published to: the SUBACK comes
  and no message ever does, so the hub would silently store nothing. The hub therefore asks
  for ``$share`` only where the broker has both, and otherwise runs one ingest worker on
  plain persistent subscriptions (what it does by default anyway).

``probe_features`` finds both out: an MQTT 5 CONNECT (NATS 2.9 answers "unsupported protocol
version", RabbitMQ 3.10 and amqtt never answer it), then, on MQTT 5, one message through a
``$share`` subscription of its own. ``KNOWN`` holds what each broker we know of lacks; the
tested ones were measured with the probe above and tests/test_broker_nats.py (see
docs/BROKERS.md).

>>> KNOWN["nats"].mqtt5, KNOWN["nats"].shared_subscriptions
(False, False)
>>> use_shared_ingest(requested=True, features=KNOWN["mosquitto"])
True
>>> use_shared_ingest(requested=True, features=KNOWN["rabbitmq"])
False
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.core.settings import SettingsError
from hub.mqtt.target import MqttTarget

BrokerName = Literal["auto", "mosquitto", "nats", "rabbitmq", "emqx", "hivemq", "vernemq", "amqtt"]
__all__ = [
    "KNOWN",
    "BrokerFeatures",
    "BrokerName",
    "broker_features",
    "probe_features",
    "use_shared_ingest",
]
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BrokerFeatures:
    """What a broker offers. ``mqtt5`` and ``shared_subscriptions`` decide what the hub does;
    the rest is what a broker lacks that the hub and agent do not need (shown in /healthz)."""

    broker: str  # a KNOWN name, or "probed"
    source: Literal["told", "probed", "embedded", "unprobed"]
    mqtt5: bool
    shared_subscriptions: bool
    qos2: bool | None = None  # None: not probed (the hub and the agent never use QoS 2)
    retained_on_wildcards: bool | None = None  # retained state delivered to devices/+/state
    dots_in_topics: bool | None = None  # "." allowed in a topic level (fleet, device id)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known(
    name: str, *, mqtt5: bool, shared: bool, qos2: bool, retained: bool, dots: bool
) -> BrokerFeatures:
    return BrokerFeatures(
        broker=name,
        source="told",
        mqtt5=mqtt5,
        shared_subscriptions=shared,
        qos2=qos2,
        retained_on_wildcards=retained,
        dots_in_topics=dots,
    )


KNOWN: dict[str, BrokerFeatures] = {
    # measured here: Mosquitto 2.0, NATS 2.9.10, RabbitMQ 3.10.8 (rabbitmq_mqtt), amqtt 0.12
    "mosquitto": _known("mosquitto", mqtt5=True, shared=True, qos2=True, retained=True, dots=True),
    "nats": _known("nats", mqtt5=False, shared=False, qos2=False, retained=True, dots=False),
    "rabbitmq": _known(
        "rabbitmq", mqtt5=False, shared=False, qos2=False, retained=False, dots=False
    ),
    "amqtt": _known("amqtt", mqtt5=False, shared=False, qos2=True, retained=True, dots=True),
    # documented only (vendors' docs): MQTT 5 with $share
    "emqx": _known("emqx", mqtt5=True, shared=True, qos2=True, retained=True, dots=True),
    "hivemq": _known("hivemq", mqtt5=True, shared=True, qos2=True, retained=True, dots=True),
    "vernemq": _known("vernemq", mqtt5=True, shared=True, qos2=True, retained=True, dots=True),
}


def use_shared_ingest(*, requested: bool, features: BrokerFeatures) -> bool:
    """``$share`` ingest only when asked for and the broker has it (and MQTT 5, which the
    shared worker speaks)."""
    return requested and features.mqtt5 and features.shared_subscriptions


def _client(target: MqttTarget, *, v5: bool) -> mqtt.Client:
    client_id = f"edgeloop-features-{uuid.uuid4().hex[:12]}"
    if v5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    target.configure(client)
    return client


def _run_until(client: mqtt.Client, done: Any, deadline: float) -> bool:
    """Drive ``client`` until ``done()``; False if the connection dropped or time ran out."""
    while not done():
        if time.monotonic() > deadline:
            return False
        if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
            return bool(done())
    return True


def probe_features(url: str, *, topic_base: str, timeout_s: float = 3.0) -> BrokerFeatures:
    """Ask the broker at ``url`` (the hub's own login in it) for MQTT 5 and ``$share``.

    ``topic_base``: a topic the hub may publish and subscribe to (its ACL allows it); the probe
    uses ``<topic_base>/hub/probe/<nonce>``. Raises ``OSError`` when the broker cannot be
    reached at all (the hub's start-up then fails as it would without the probe)."""
    target = MqttTarget.from_url(url)
    client = _client(target, v5=True)
    codes: list[Any] = []
    client.on_connect = lambda _c, _u, _f, code, _p: codes.append(code)
    deadline = time.monotonic() + timeout_s
    client.connect(target.host, target.port, keepalive=10, clean_start=True)
    try:
        connected = _run_until(client, lambda: bool(codes), deadline)
        mqtt5 = connected and bool(codes) and not codes[0].is_failure
        shared = mqtt5 and _shared_round_trip(client, topic_base=topic_base, deadline=deadline)
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.01)
    if not mqtt5:  # reachable at all? (3.1.1 CONNECT; raises OSError if not)
        plain = _client(target, v5=False)
        plain.connect(target.host, target.port, keepalive=10)
        with contextlib.suppress(Exception):
            plain.disconnect()
    return BrokerFeatures(
        broker="probed", source="probed", mqtt5=mqtt5, shared_subscriptions=shared
    )


def _shared_round_trip(client: mqtt.Client, *, topic_base: str, deadline: float) -> bool:
    nonce = uuid.uuid4().hex[:12]
    topic = f"{topic_base}/hub/probe/{nonce}"
    got: list[bytes] = []
    acked: list[bool] = []
    client.on_message = lambda _c, _u, message: got.append(bytes(message.payload))
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: acked.append(
        not any(code.is_failure for code in codes)
    )
    client.subscribe(f"$share/edgeloop-probe-{nonce}/{topic}", qos=1)
    if not _run_until(client, lambda: bool(acked), deadline) or not acked[0]:
        return False
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 10  # never left behind in a session
    client.publish(topic, nonce.encode(), qos=1, properties=props)
    return _run_until(client, lambda: nonce.encode() in got, deadline)


def broker_features(
    *,
    told: BrokerName,
    embedded: str | None,
    hub_url: str,
    topic_base: str,
    ingest_shared: bool,
) -> BrokerFeatures:
    """What ``hub serve`` assumes of its broker: the embedded one's (``embedded``: its kind),
    the one ``EDGELOOP_MQTT_BROKER`` names, or, for ``auto`` with ``$share`` ingest asked
    for, what :func:`probe_features` finds (the only case where it matters; otherwise the
    hub uses nothing beyond MQTT 3.1.1 and QoS 1, and says it did not probe)."""
    if embedded is not None:
        return replace(KNOWN[embedded], source="embedded")
    if told != "auto":
        if KNOWN[told].dots_in_topics is False and "." in topic_base:
            raise SettingsError(
                f"topics under {topic_base!r} have a '.', which {told} does not allow in a "
                "topic (NATS closes the connection, RabbitMQ makes it a level separator): "
                "choose an EDGELOOP_FLEET and EDGELOOP_TOPIC_PREFIX without one"
            )
        return KNOWN[told]
    if not ingest_shared:
        return BrokerFeatures(
            broker="external", source="unprobed", mqtt5=False, shared_subscriptions=False
        )
    found = probe_features(hub_url, topic_base=topic_base)
    log.info(
        "broker features probed: MQTT 5 %s, $share %s", found.mqtt5, found.shared_subscriptions
    )
    return found
