"""The demo's clock: when each step happened and how the rollouts progressed, live.

A leaf: the story writes it (``_story``), the report draws it (``_report``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Timeline"]


@dataclass
class Timeline:
    t0: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)
    rollouts: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, name: str) -> float:
        self.marks[name] = self.now()
        return self.marks[name]
