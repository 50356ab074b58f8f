"""MQTT topic names: build them and parse them back, in one place.

Every topic lives under ``<prefix>/<fleet>/devices/<device_id>/<kind>``, e.g.
``edgeloop/v1/default/devices/cam-7/telemetry``. See docs/PROTOCOL.md for direction,
QoS, retain and payload of each kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Characters a device id (or fleet name) may not contain: the level separator,
#: the MQTT wildcards and NUL.
FORBIDDEN = frozenset("/+#\x00")


class TopicKind(StrEnum):
    """The last level of a device topic."""

    COMMAND = "cmd"
    STATE = "state"
    EVENTS = "events"
    TELEMETRY = "telemetry"
    FEEDBACK = "feedback"
    ACK = "ack"  # hub -> device: DeliveryAck


def validate_device_id(device_id: str) -> str:
    """``device_id`` unchanged, or ValueError if it cannot be one MQTT topic level."""
    _check_level(device_id, what="device id")
    return device_id


def _check_level(value: str, *, what: str) -> None:
    if not value:
        raise ValueError(f"{what} must not be empty")
    bad = sorted(FORBIDDEN.intersection(value))
    if bad:
        raise ValueError(f"{what} {value!r} contains forbidden characters {bad}")
    if value.startswith("$"):
        raise ValueError(f"{what} {value!r} must not start with '$' (reserved by MQTT)")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one fleet under one prefix."""

    prefix: str = "edgeloop/v1"
    fleet: str = "default"

    def __post_init__(self) -> None:
        levels = self.prefix.split("/")
        if not self.prefix or any(not level for level in levels):
            raise ValueError(f"topic prefix {self.prefix!r} has an empty level")
        for level in levels:
            _check_level(level, what=f"topic prefix {self.prefix!r} level")
        _check_level(self.fleet, what="fleet")

    @property
    def base(self) -> str:
        """``<prefix>/<fleet>``: the root of every topic of this fleet."""
        return f"{self.prefix}/{self.fleet}"

    def device(self, device_id: str, kind: TopicKind | str) -> str:
        """The topic of ``kind`` for one device."""
        return f"{self.base}/devices/{validate_device_id(device_id)}/{TopicKind(kind)}"

    def command(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.COMMAND)

    def state(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.STATE)

    def events(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.EVENTS)

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.TELEMETRY)

    def feedback(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.FEEDBACK)

    def ack(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.ACK)

    def wildcard(self, kind: TopicKind | str) -> str:
        """Filter matching ``kind`` for every device (a plain, unshared subscription)."""
        return f"{self.base}/devices/+/{TopicKind(kind)}"

    def shared(self, kind: TopicKind | str, group: str = "hub") -> str:
        """Shared-subscription filter: the workers of ``group`` split the messages.

        ``$share/<group>/...`` works on MQTT 5 brokers and on Mosquitto / EMQX / HiveMQ
        with MQTT 3.1.1; the embedded amqtt broker does not support it (use
        :meth:`wildcard` there, with a single ingest worker).
        """
        _check_level(group, what="share group")
        return f"$share/{group}/{self.wildcard(kind)}"

    def parse(self, topic: str) -> tuple[str, TopicKind]:
        """``(device_id, kind)`` of one of this fleet's device topics, else ValueError."""
        head = f"{self.base}/devices/"
        if not topic.startswith(head):
            raise ValueError(f"topic {topic!r} is not under {head!r}")
        rest = topic[len(head) :].split("/")
        if len(rest) != 2:
            raise ValueError(f"topic {topic!r} is not {head}<device_id>/<kind>")
        device_id, kind = rest
        try:
            validate_device_id(device_id)
        except ValueError as exc:
            raise ValueError(f"topic {topic!r}: {exc}") from None
        try:
            return device_id, TopicKind(kind)
        except ValueError:
            known = [k.value for k in TopicKind]
            raise ValueError(f"topic {topic!r}: unknown kind {kind!r}; known: {known}") from None
