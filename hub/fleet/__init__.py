"""The devices the hub knows (``devices``: registry CRUD) and the commands it sends them over
MQTT (``commands.CommandPublisher``, shared by rollouts and key rotation).
"""

from hub.fleet import commands, devices

__all__ = ["commands", "devices"]
