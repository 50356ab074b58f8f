"""Where the agent keeps its state, as plain constants (no settings machinery), so the CLI can
name them in its help without loading pydantic-settings."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DATA_DIR", "ENROLLMENT_FILE"]

DEFAULT_DATA_DIR = Path("~/.edgeloop-agent")  # the agent's state folder (--agent-dir)
ENROLLMENT_FILE = "enrollment.json"  # what `edgeloop agent enroll` stored, per device
