"""Phased rollouts with ML-health gates: selectors, phases, gates, the controller, operations.

``service`` holds the operations (create, pause, resume, advance, cancel, rollback, retry,
approve); ``controller.RolloutController`` is the reconcile loop that acts on them. See
docs/ROLLOUTS.md for the state machine.
"""
