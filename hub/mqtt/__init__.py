"""The hub's MQTT side: the embedded broker (``broker.EmbeddedBroker``: Mosquitto as a child
process, ``mosquitto`` its config; ``amqtt`` the demo-only fallback; ``net`` the CONNECT probe
and ports; ``embedded`` starts it with the hub's logins), the broker's access control
generated from the database (``auth``, debounced by ``debounce``), and where the hub's own
clients connect (``target.MqttTarget``).
"""

import importlib
from types import ModuleType

__all__ = ["amqtt", "auth", "broker", "debounce", "embedded", "mosquitto", "net", "target"]


def __getattr__(name: str) -> ModuleType:
    """The modules load on first use (``from hub.mqtt import X`` as usual): importing the
    package pulls in nothing it does not need."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
