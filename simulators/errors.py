"""The simulators' one exception root."""

from __future__ import annotations

__all__ = ["ScenarioError", "SimulatorError"]


class SimulatorError(Exception):
    """Anything the simulators refuse; the message says what to change."""


class ScenarioError(SimulatorError, ValueError):
    """A scenario file that cannot be read or does not validate; the message says where."""
