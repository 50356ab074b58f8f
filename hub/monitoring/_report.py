"""What one evaluation did, for logs, the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.tables.monitoring import Alert, AlertPublic


def alert_json(alert: Alert) -> dict[str, Any]:
    return dict(AlertPublic.model_validate(alert).model_dump(mode="json"))


@dataclass(kw_only=True)
class MonitorReport:
    at: datetime
    versions: list[str] = field(default_factory=list)  # model@version evaluated
    rows: int = 0  # telemetry rows summed into windows
    labels: int = 0  # labels evaluated
    windows: int = 0  # detector windows evaluated (all scopes)
    scores: int = 0  # monitor_score rows written
    opened: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    errors: int = 0  # versions whose evaluation failed (rolled back, retried next time)
    seconds: float = 0.0  # how long the evaluation took

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "versions": self.versions,
            "rows": self.rows,
            "labels": self.labels,
            "windows": self.windows,
            "scores": self.scores,
            "alerts_opened": [alert_json(a) for a in self.opened],
            "alerts_resolved": [alert_json(a) for a in self.resolved],
            "skipped": self.skipped,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }
