"""The device side of edgeloop: MQTT session, verified bundles, runtimes, telemetry.

Built in its own issue; this package must never import ``hub`` or ``torch``.
"""
