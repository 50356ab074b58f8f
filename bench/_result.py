"""The one result format every benchmark writes."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    name: str
    baseline: str  # what the ratio is measured against
    ratio: float
    target: str  # e.g. ">= 0.5"
    met: bool
    details: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path = RESULTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        body = {
            **asdict(self),
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        path.write_text(json.dumps(body, indent=2) + "\n")
        return path

    def line(self) -> str:
        mark = "met" if self.met else "NOT met"
        return (
            f"{self.name}: ratio {self.ratio:.3f} vs {self.baseline} (target {self.target}: {mark})"
        )
