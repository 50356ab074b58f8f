"""``evaluate``: one monitoring pass over the telemetry and labels that arrived since the last.

For each (model, version) with new rows: drift windows per scope (device, group, version)
through the cached detectors, degradation from labels, every score in ``monitor_score``,
alerts debounced in ``alert``; cursors advance in the same transaction as the scores and
alerts they account for, so a restart neither re-alerts nor skips. New and resolved alerts
are announced after the commit: ``on_alert(alert)`` for each new one, and with a publisher a
JSON message on ``<prefix>/<fleet>/hub/alerts`` (QoS 1) for both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.core.clock import utcnow
from hub.core.db import session_scope, try_transaction_lock
from hub.monitoring._alerts import AlertBook
from hub.monitoring._cache import NOMINAL_RATE, DetectorCache, DetectorSettings, cache_for
from hub.monitoring._cursors import HEAD
from hub.monitoring._degradation import evaluate_degradation
from hub.monitoring._drift import evaluate_drift
from hub.monitoring._report import MonitorReport, alert_json
from hub.tables.fleet import FeedbackLabelRow, TelemetryWindowRow
from hub.tables.monitoring import Alert, MonitorCursor

if TYPE_CHECKING:
    from hub.core.artifacts import ArtifactStore
    from hub.core.settings import HubSettings

log = logging.getLogger("edgeloop.monitor")


class AlertPublisher(Protocol):
    def publish_alert(self, message: dict[str, Any]) -> None: ...


@dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """How the monitor tests. The false-alarm control is the fleet budget
    (``false_alarms_per_day`` per model version, see :mod:`hub.monitoring.budget`) unless
    ``false_alarm_rate`` fixes a rate per scope and window instead (over all drift
    detectors: no control of the fleet-wide count). ``aggregate_by_batch`` (``hub serve``,
    whose passes come every check interval): a group's or version's window closes at the
    end of each batch of rows a pass reads (with at least ``window_size`` predictions), so a
    big fleet's aggregate scopes are tested about once per interval, on at most
    ``max_window`` predictions (a thinned sample of the window's counts), not once per
    ``window_size`` predictions."""

    window_size: int = 200  # predictions per drift window
    false_alarm_rate: float | None = None
    false_alarms_per_day: float = 1.0
    aggregate_by_batch: bool = False
    max_window: int = 1000
    accuracy_margin: float = 0.05  # degradation: this far below the evaluated accuracy
    min_labels: int = 50  # labels a scope needs before the accuracy test runs
    label_window: int = 500  # the accuracy test looks at this many latest labels
    resolve_after: int = 3  # clean evaluations that resolve an open alert
    batch_rows: int = 5000  # rows per transaction

    @classmethod
    def from_settings(cls, settings: HubSettings) -> MonitorConfig:
        return cls(
            window_size=settings.monitor_window_size,
            false_alarm_rate=settings.monitor_false_alarm_rate,
            false_alarms_per_day=settings.monitor_false_alarms_per_day,
            aggregate_by_batch=settings.monitor_interval_s > 0,
            accuracy_margin=settings.monitor_accuracy_margin,
            min_labels=settings.monitor_min_labels,
        )

    @property
    def detector_settings(self) -> DetectorSettings:
        budget = self.false_alarm_rate is None
        return DetectorSettings(
            window_size=self.window_size,
            false_alarm_rate=NOMINAL_RATE if budget else float(self.false_alarm_rate or 0),
            accuracy_margin=self.accuracy_margin,
            label_window=self.label_window,
            per_day=self.false_alarms_per_day if budget else None,
            aggregate_by_batch=self.aggregate_by_batch,
            max_window=max(self.max_window, self.window_size),
        )


def evaluate(
    engine: Engine,
    *,
    now: datetime | None = None,
    config: MonitorConfig | None = None,
    on_alert: Callable[[Alert], None] | None = None,
    publisher: AlertPublisher | None = None,
    cache: DetectorCache | None = None,
    store: ArtifactStore | None = None,
    owns: Callable[[str, str], bool] | None = None,
) -> MonitorReport:
    """Evaluate everything new since the last call (see the module docstring). ``store``:
    the artifact store, for the raw reference rows bundles ship (the MMD detector).

    ``owns``: with several monitor replicas on one database, whether this one evaluates a
    (model, version); the others are left alone (their state dropped here, looked at again
    every pass in case they become this replica's). Each version's batch also takes the
    version's transaction lock (:func:`hub.core.db.try_transaction_lock`): while two
    replicas disagree on who owns it (one just joined or left), only one evaluates it at a
    time, from the cursors the other committed, so no window is scored twice and no scope
    alerted twice."""
    config = config or MonitorConfig()
    cache = cache or cache_for(str(engine.url), store=store)
    report = MonitorReport(at=now or utcnow())
    started = time.perf_counter()
    with cache.lock:
        with Session(engine) as s:
            pending = _pending_versions(s, cache)
        if owns is not None:
            others = [p for p in pending if not owns(*p)]
            for model, version in others:
                cache.forget(model=model, version=version)
                cache.retry.add((model, version))
            pending = [p for p in pending if p not in set(others)]
        for model, version in pending:
            report.versions.append(f"{model}@{version}")
            while True:
                try:
                    more = _evaluate_batch(
                        engine,
                        model=model,
                        version=version,
                        config=config,
                        cache=cache,
                        report=report,
                    )
                except Exception:  # rolled back: cursors did not move, next tick retries
                    log.exception("monitoring %s@%s failed", model, version)
                    cache.forget(model=model, version=version)
                    cache.retry.add((model, version))  # found again next pass
                    report.errors += 1
                    break
                if more is None:  # another replica is on it: look again next pass
                    cache.forget(model=model, version=version)
                    cache.retry.add((model, version))
                    break
                if not more:
                    break
        cache.evict()
        report.seconds = time.perf_counter() - started
        cache.last_cycle = {"at": report.at.isoformat(), "seconds": round(report.seconds, 3)}
    for alert in report.opened:
        log.warning(
            "%s alert on %s (%s@%s, %s): score %.3g > %.3g",
            alert.kind,
            alert.scope,
            alert.model,
            alert.version,
            alert.detector,
            alert.score,
            alert.threshold,
        )
        _announce(alert, event="opened", on_alert=on_alert, publisher=publisher)
    for alert in report.resolved:
        _announce(alert, event="resolved", on_alert=None, publisher=publisher)
    return report


def _evaluate_batch(
    engine: Engine,
    *,
    model: str,
    version: str,
    config: MonitorConfig,
    cache: DetectorCache,
    report: MonitorReport,
) -> bool | None:
    """One transaction; True when a stream filled its batch (more rows may wait); None when
    another replica holds the version's lock (nothing done)."""
    # Nothing is written until the final flush: the detectors' work (calibration can take
    # seconds) must not hold SQLite's write lock, or ingest and training wait on it.
    with session_scope(engine) as s, s.no_autoflush:
        if not try_transaction_lock(s, f"monitor:{model}@{version}"):
            return None
        key = (model, version)
        if key in cache.heads and cache.heads[key] != _heads(s, model=model, version=version):
            cache.forget(model=model, version=version)  # another replica moved on: rebuild
        book = AlertBook(
            s, model=model, version=version, now=report.at, resolve_after=config.resolve_after
        )
        settings = config.detector_settings
        rows = evaluate_drift(
            s,
            model=model,
            version=version,
            settings=settings,
            cache=cache,
            book=book,
            report=report,
            batch_rows=config.batch_rows,
        )
        labels = evaluate_degradation(
            s,
            model=model,
            version=version,
            settings=settings,
            min_labels=config.min_labels,
            cache=cache,
            book=book,
            report=report,
            batch_rows=config.batch_rows,
        )
        book.write_scores()
        s.flush()
        cache.heads[key] = _heads(s, model=model, version=version)
    report.scores += book.scores
    report.opened.extend(book.opened)
    report.resolved.extend(book.resolved)
    return max(rows, labels) >= config.batch_rows


def _heads(session: Session, *, model: str, version: str) -> dict[str, int]:
    """The version's read cursors: stream -> last row id."""
    rows = session.exec(
        select(MonitorCursor.stream, MonitorCursor.last_id).where(
            MonitorCursor.model == model,
            MonitorCursor.version == version,
            MonitorCursor.scope == HEAD,
        )
    ).all()
    return {stream: int(last) for stream, last in rows}


def _pending_versions(session: Session, cache: DetectorCache) -> list[tuple[str, str]]:
    """(model, version) pairs with telemetry or labels past their cursor: for versions with a
    cursor, one index seek each; new versions from the rows added since the last pass (the
    cache remembers how far it looked; a new process looks through the tables once)."""
    found, cache.retry = set(cache.retry), set()
    cursors = session.exec(select(MonitorCursor).where(MonitorCursor.scope == HEAD)).all()
    known: dict[str, set[tuple[str, str]]] = {}
    for stream, table in (("telemetry", TelemetryWindowRow), ("feedback", FeedbackLabelRow)):
        mine = {(c.model, c.version): c.last_id for c in cursors if c.stream == stream}
        known[stream] = set(mine)
        for (model, version), last in mine.items():
            past = session.exec(
                select(table.id)
                .where(table.model == model, table.version == version, col(table.id) > last)
                .limit(1)
            ).first()
            if past is not None:
                found.add((model, version))
        seen = cache.discovered.get(stream, 0)
        newest = session.exec(select(func.max(table.id)).where(col(table.id) > seen)).one()
        if newest is None:
            continue
        for model, version in session.exec(
            select(table.model, table.version)
            .where(col(table.id) > seen, col(table.id) <= newest)
            .distinct()
        ).all():
            if (model, version) not in known[stream]:
                found.add((model, version))
        cache.discovered[stream] = int(newest)
    return sorted(found)


def _announce(
    alert: Alert,
    *,
    event: str,
    on_alert: Callable[[Alert], None] | None,
    publisher: AlertPublisher | None,
) -> None:
    if on_alert is not None:
        try:
            on_alert(alert)
        except Exception:
            log.exception("on_alert hook failed for alert %s", alert.id)
    if publisher is not None:
        try:
            publisher.publish_alert({"event": event, **alert_json(alert)})
        except Exception:
            log.exception("publishing alert %s failed", alert.id)
