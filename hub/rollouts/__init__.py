"""Phased rollouts with ML-health gates: selectors, phases, gates, the controller, operations.

``service`` holds the operations (create, pause, resume, advance, cancel, rollback, retry,
approve); ``controller.RolloutController`` is the reconcile loop that acts on them;
``events`` (the clock and the event log) is the leaf every other module here writes
through. See docs/ROLLOUTS.md for the state machine.
"""

__all__ = ["controller", "events", "gates", "phases", "selectors", "service", "views"]
