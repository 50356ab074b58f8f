"""The devices the hub knows (``devices``: registry CRUD) and the commands it sends them over
MQTT (``commands.CommandPublisher``, shared by rollouts and key rotation).
"""

from hub._lazy import submodules

__all__ = ["commands", "devices"]


__getattr__ = submodules(__name__, __all__)
