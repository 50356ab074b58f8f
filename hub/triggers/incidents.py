"""Monitoring incidents as retraining triggers: open drift and degradation alerts.

One incident triggers one run. An incident is "the model version ``V`` of model ``M``
drifted / degraded"; the first open alert about ``V`` starts a run, the run records the ids
of every open alert about ``M`` it answers (marking them consumed), and ``V`` joins the
policy's ``handled_versions`` so alerts about it raised while that incident goes on (more
devices, other scopes, the same drift still going on while the new model trains and rolls
out) start nothing new. Once every alert the incident consumed has resolved, the incident
has ended: an alert on ``V`` raised after that is a new incident, so a false alarm (which
resolves) cannot swallow the real drift that follows it. A new incident waits while a run
is going (one run per model at a time) and starts the next run then; no debounce holds an
incident back. A new version that drifts in its turn is a new incident.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from hub.core.clock import aware
from hub.tables.monitoring import Alert, AlertKind
from hub.tables.triggers import TrainingPolicy, TriggerKind


@dataclass(frozen=True, kw_only=True)
class Incident:
    kind: TriggerKind
    alerts: list[Alert]

    @property
    def started_at(self) -> datetime:
        """When the incident's first alert was raised (timezone-aware)."""
        first = min(a.at for a in self.alerts)
        return aware(first)

    @property
    def versions(self) -> list[str]:
        return sorted({a.version for a in self.alerts if a.version})

    def reason(self) -> str:
        first = self.alerts[0]
        more = f" (+{len(self.alerts) - 1} more alerts)" if len(self.alerts) > 1 else ""
        return (
            f"{first.kind} alert #{first.id} on {first.scope}: {first.detector or 'monitor'} "
            f"score {first.score:.4g} > threshold {first.threshold:.4g}{more}"
        )


def open_alerts(session: Session, *, model_name: str) -> list[Alert]:
    """Unresolved, unconsumed alerts about ``model_name``, oldest first."""
    return list(
        session.exec(
            select(Alert)
            .where(
                Alert.model == model_name,
                col(Alert.resolved_at).is_(None),
                Alert.consumed_by == "",
            )
            .order_by(col(Alert.id))
        ).all()
    )


def pending_incident(session: Session, *, policy: TrainingPolicy) -> Incident | None:
    """The incident that should retrain ``policy``'s model now, if any.

    Degradation (the model is measurably worse) goes before drift (it may become worse).
    Alerts about versions already handled are ignored here (:func:`consume` retires them).
    """
    handled = set(policy.handled_versions)
    found = open_alerts(session, model_name=policy.model_name)
    ended = _ended(session, model_name=policy.model_name, versions=handled) if found else {}
    fresh = [a for a in found if a.version not in handled or _after(a, ended.get(a.version))]
    for kind, enabled in (
        (AlertKind.DEGRADATION, policy.on_degradation),
        (AlertKind.DRIFT, policy.on_drift),
    ):
        alerts = [a for a in fresh if a.kind == kind]
        if enabled and alerts:
            return Incident(kind=TriggerKind(kind.value), alerts=alerts)
    return None


def _ended(session: Session, *, model_name: str, versions: set[str]) -> dict[str, datetime]:
    """Per handled version whose incidents have ended (every alert they consumed resolved),
    when the last of those alerts resolved."""
    if not versions:
        return {}
    rows = session.exec(
        select(Alert.version, Alert.resolved_at).where(
            Alert.model == model_name,
            col(Alert.version).in_(sorted(versions)),
            Alert.consumed_by != "",
        )
    ).all()
    out: dict[str, datetime] = {}
    still_open: set[str] = set()
    for version, resolved in rows:
        if resolved is None:
            still_open.add(version)
        else:
            at = aware(resolved)
            out[version] = max(out.get(version, at), at)
    return {v: t for v, t in out.items() if v not in still_open}


def _after(alert: Alert, ended: datetime | None) -> bool:
    return ended is not None and aware(alert.at) > ended


def consume(
    session: Session, *, policy: TrainingPolicy, incident: Incident, event_id: int
) -> list[int]:
    """Mark every open alert about the model consumed by trigger event ``event_id``."""
    versions = set(policy.handled_versions) | set(incident.versions)
    policy.handled_versions = sorted(versions)
    ids = []
    for alert in open_alerts(session, model_name=policy.model_name):
        if alert.version in versions:
            alert.consumed_by = f"trigger:{event_id}"
            session.add(alert)
            ids.append(int(alert.id or 0))
    session.add(policy)
    return ids
