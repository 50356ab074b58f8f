"""Fleets of real edge agents on one machine, for tests, demos and benchmarks.

``fleet.Fleet`` runs the agents from a ``scenario.Scenario`` (``sensors`` feed them,
``netfaults`` cut their network, ``bundles`` serve their models); ``counting`` tallies what
reached the broker; ``runner`` is ``edgeloop sim run``.
"""

__all__ = [
    "bundles",
    "counting",
    "device",
    "errors",
    "fleet",
    "netfaults",
    "plan",
    "runner",
    "scenario",
    "sensors",
    "shards",
]
