"""The hub's MQTT side: the embedded broker (``broker.EmbeddedBroker``: Mosquitto as a child
process, ``mosquitto`` its config; ``amqtt`` the demo-only fallback; ``net`` the CONNECT probe
and ports; ``embedded`` starts it with the hub's logins), the broker's access control
generated from the database (``auth``, debounced by ``debounce``), and where the hub's own
clients connect (``target.MqttTarget``).
"""

from hub._lazy import submodules

__all__ = [
    "amqtt",
    "auth",
    "broker",
    "debounce",
    "embedded",
    "features",
    "mosquitto",
    "net",
    "target",
]


__getattr__ = submodules(__name__, __all__)
