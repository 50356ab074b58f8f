"""Scores into the time series, and alerts with debounce: one open alert per
(kind, scope, detector, model, version), resolved after ``resolve_after`` clean evaluations
in a row.

Hysteresis: an alert opens when a window's p-value is below its (tiny) false-alarm rate, but
a window only counts as clean when its p-value is at least ``CLEAR_P`` (or, for a detector
without one, when it does not fire); a window in between (no longer firing, not yet like the
reference) keeps the alert open and restarts its clean streak, so a drift that hovers near
the threshold holds one alert instead of opening and resolving one after another."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from hub.core.clock import utcnow
from hub.tables.monitoring import Alert, MonitorScore

AlertKey = tuple[str, str, str]  # kind, scope, detector
CLEAR_P = 0.01  # a window this likely under the reference counts as clean


def finite(value: float | None, *, default: float = 0.0) -> float:
    """JSON and SQL want finite floats: NaN becomes ``default``, infinities are clamped."""
    if value is None or math.isnan(value):
        return default
    return max(min(float(value), 1e300), -1e300)


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One detector's verdict on one evaluated window of one scope."""

    kind: str
    scope: str
    detector: str
    score: float
    threshold: float
    p_value: float | None
    fired: bool
    n: int
    last_row_id: int
    detail: dict[str, Any]
    at: datetime | None = None  # when its evidence reached the hub (None: the evaluation's time)


class AlertBook:
    """The open alerts of one model version, loaded once per evaluation."""

    def __init__(
        self, session: Session, *, model: str, version: str, now: datetime, resolve_after: int
    ) -> None:
        self._session, self._model, self._version = session, model, version
        self.now, self._resolve_after = now, resolve_after
        rows = session.exec(
            select(Alert).where(
                Alert.model == model, Alert.version == version, col(Alert.resolved_at).is_(None)
            )
        ).all()
        self._open: dict[AlertKey, Alert] = {(a.kind, a.scope, a.detector): a for a in rows}
        self.opened: list[Alert] = []
        self.resolved: list[Alert] = []
        self.scores = 0
        self._scores: list[dict[str, Any]] = []

    def write_scores(self) -> None:
        """Add the recorded scores to the session's transaction (one bulk INSERT); call once
        the batch's work is done, so SQLite's write lock is taken at the end."""
        if self._scores:
            self._session.execute(insert(MonitorScore), self._scores)
            self._scores = []

    def record(self, finding: Finding) -> None:
        at = finding.at or self.now
        score, threshold = finite(finding.score), finite(finding.threshold)
        p_value = None if finding.p_value is None else finite(finding.p_value)
        # written in one bulk INSERT by write_scores (an ORM object each cost ~0.6 ms)
        self._scores.append(
            {
                "kind": finding.kind,
                "scope": finding.scope,
                "model": self._model,
                "version": self._version,
                "detector": finding.detector,
                "score": score,
                "threshold": threshold,
                "p_value": p_value,
                "fired": finding.fired,
                "n": finding.n,
                "last_row_id": finding.last_row_id,
                "at": at,
            }
        )
        self.scores += 1
        key = (finding.kind, finding.scope, finding.detector)
        alert = self._open.get(key)
        if finding.fired:
            if alert is None:
                alert = Alert(
                    kind=finding.kind,
                    scope=finding.scope,
                    model=self._model,
                    version=self._version,
                    detector=finding.detector,
                    score=score,
                    threshold=threshold,
                    p_value=p_value,
                    # when its evidence arrived; raised_at: when the monitor saw it (the
                    # difference is the monitor's lag)
                    at=at,
                    detail={
                        **finding.detail,
                        "n": finding.n,
                        "clean_evaluations": 0,
                        "raised_at": utcnow().isoformat(),
                    },
                )
                self._session.add(alert)
                self._open[key] = alert
                self.opened.append(alert)
            else:  # still firing: the alert stays open, its clean streak restarts
                alert.detail = {
                    **alert.detail,
                    "clean_evaluations": 0,
                    "latest_score": score,
                    "last_fired_at": at.isoformat(),
                }
                self._session.add(alert)
        elif alert is not None:
            clear = finding.p_value is None or finding.p_value >= CLEAR_P
            clean = int(alert.detail.get("clean_evaluations", 0)) + 1 if clear else 0
            alert.detail = {**alert.detail, "clean_evaluations": clean, "latest_score": score}
            if clean >= self._resolve_after:
                alert.resolved_at = at
                del self._open[key]
                self.resolved.append(alert)
            self._session.add(alert)


def open_alerts(
    session: Session,
    *,
    kind: str | None = None,
    model: str | None = None,
    version: str | None = None,
    scope: str | None = None,
) -> list[Alert]:
    """Unresolved alerts, oldest first (for training triggers and rollout gates)."""
    return list_alerts(
        session, kind=kind, model=model, version=version, scope=scope, open_only=True
    )


def list_alerts(
    session: Session,
    *,
    kind: str | None = None,
    model: str | None = None,
    version: str | None = None,
    scope: str | None = None,
    open_only: bool = False,
    limit: int | None = None,
) -> list[Alert]:
    query = select(Alert)
    if kind is not None:
        query = query.where(Alert.kind == kind)
    if model is not None:
        query = query.where(Alert.model == model)
    if version is not None:
        query = query.where(Alert.version == version)
    if scope is not None:
        query = query.where(Alert.scope == scope)
    if open_only:
        query = query.where(col(Alert.resolved_at).is_(None))
    if limit is not None:
        rows = session.exec(query.order_by(col(Alert.id).desc()).limit(limit)).all()
        return list(reversed(rows))
    return list(session.exec(query.order_by(col(Alert.id))).all())


def drift_score(
    session: Session, *, model: str, version: str, since: datetime | None = None
) -> float | None:
    """The largest drift ``score / threshold`` of ``model@version`` (any scope, any detector)
    since ``since`` (rolled-up scores: whole hours from ``since``); above 1 means a detector
    fired. None when nothing was evaluated."""
    query = select(MonitorScore.score, MonitorScore.threshold).where(
        MonitorScore.kind == "drift", MonitorScore.model == model, MonitorScore.version == version
    )
    if since is not None:
        query = query.where(col(MonitorScore.at) >= since)
    from hub.retention.service import rolled_up_drift  # scores that retention rolled up

    best: float | None = rolled_up_drift(session, model=model, version=version, since=since)
    for score, threshold in session.exec(query).all():
        ratio = score / threshold if threshold > 0 else (math.inf if score > 0 else 0.0)
        best = ratio if best is None else max(best, ratio)
    return None if best is None else finite(best)
