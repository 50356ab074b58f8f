"""Retention for every table that grows with traffic, with hourly roll-ups where a long view
matters. ``hub serve`` runs :class:`RetentionLoop` hourly; each setting is in seconds and 0
keeps the rows forever.

=====================  ============  ===========================  ==========================
table                  age by        setting (default)            roll-up
=====================  ============  ===========================  ==========================
``telemetry_window``   window_start  TELEMETRY_RETENTION_S (7 d)  ``telemetry_rollup``
``feedback_label``     received_at   FEEDBACK_RETENTION_S (30 d)  ``label_rollup``
``field_sample``       received_at   FEEDBACK_RETENTION_S         (none: raw inputs)
``monitor_score``      at            MONITOR_SCORE_RETENTION_S    ``monitor_score_rollup``
                                     (14 d)
``alert``              resolved_at   EVENT_RETENTION_S (90 d)     (none)
``deployment_event``   received_at   EVENT_RETENTION_S            (none)
``rollout_event``      finished_at   EVENT_RETENTION_S            (none)
                       of its rollout
``trigger_event``      at            EVENT_RETENTION_S            (none)
=====================  ============  ===========================  ==========================

(settings are ``EDGELOOP_...``). Rows a reader still needs are never deleted, however old:

- telemetry windows and labels past monitoring's read cursor of their ``model@version``
  (``monitor_cursor``, scope ``*``); while monitoring runs (``monitor_interval_s`` > 0) also
  those of a version monitoring has no cursor for yet;
- field samples monitoring may still read for a multivariate (MMD) window: those at or after
  the oldest ``window_start`` of an unread telemetry window of their version, or the
  ``start_ms`` of a scope's pending (not yet evaluated) window;
- **the field data the default retrain reads**: ``hub.triggers.field_data`` takes the newest
  :data:`FIELD_RECORDS_KEPT` (20,000) labelled field samples of a model (sample joined with
  its label on device and prediction id); those samples and their labels are kept;
- the newest monitor score of each (kind, scope, model, version, detector) series (status
  pages show it);
- open alerts; deployment events of a rollout that has not finished (by the event's rollout
  id, or its command id among the unfinished rollouts' commands) and the events of such a
  rollout; started trigger events, and skipped ones for a dataset's latest version
  (``skip_recorded`` reads them).

A chunk of rows is rolled up and deleted in one transaction, so nothing is counted twice.
Run it from one process. ``ingest_seq`` is kept: it is the dedupe key and the basis of the
gap report.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col
from sqlmodel import select as sql_select

from hub.core.clock import aware
from hub.core.db import make_engine
from hub.core.service import Owning, Periodic
from hub.core.settings import HubSettings
from hub.ingest.retention import read_by_monitoring, rollup_and_prune
from hub.tables import (
    Alert,
    DatasetVersion,
    DeploymentEventRow,
    FeedbackLabelRow,
    FieldSample,
    LabelRollup,
    MonitorCursor,
    MonitorScore,
    MonitorScoreRollup,
    Rollout,
    RolloutDevice,
    RolloutEvent,
    RolloutShadow,
    TelemetryWindowRow,
    TriggerEvent,
    TriggerStatus,
)
from hub.tables.monitoring import CURSOR_HEAD

__all__ = [
    "FIELD_RECORDS_KEPT",
    "RetentionLoop",
    "RetentionPolicy",
    "RetentionReport",
    "prune_events",
    "prune_feedback",
    "prune_monitor_scores",
    "rolled_up_correct",
    "rolled_up_drift",
    "run_retention",
]

log = logging.getLogger("edgeloop.retention")

FIELD_RECORDS_KEPT = 20_000  # = labelled_field_records' default limit (a test checks)
CHUNK = 2000
DAY_S = 24 * 3600.0
EVERY_S = 3600.0


def _table(model: type[SQLModel]) -> Table:
    found = getattr(model, "__table__", None)
    if not isinstance(found, Table):  # pragma: no cover - every table model has one
        raise TypeError(f"{model.__name__} is not a table model")
    return found


def _hour(at: datetime) -> datetime:
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """How long raw rows are kept, in seconds (None: forever)."""

    telemetry_s: float | None = 7 * DAY_S
    feedback_s: float | None = 30 * DAY_S  # labels and field samples
    monitor_scores_s: float | None = 14 * DAY_S
    events_s: float | None = 90 * DAY_S  # alerts, deployment/rollout/trigger events
    monitored: bool = True  # monitoring runs: keep what it has not read yet
    field_records_kept: int = FIELD_RECORDS_KEPT

    @classmethod
    def from_settings(cls, settings: HubSettings) -> RetentionPolicy:
        return cls(
            telemetry_s=settings.telemetry_retention_s or None,
            feedback_s=settings.feedback_retention_s or None,
            monitor_scores_s=settings.monitor_score_retention_s or None,
            events_s=settings.event_retention_s or None,
            monitored=settings.monitor_interval_s > 0,
        )

    @property
    def enabled(self) -> bool:
        return any((self.telemetry_s, self.feedback_s, self.monitor_scores_s, self.events_s))


@dataclass(kw_only=True)
class RetentionReport:
    """Rows deleted per table (rolled up first where a roll-up exists), and failed parts."""

    telemetry_windows: int = 0
    labels: int = 0
    field_samples: int = 0
    monitor_scores: int = 0
    alerts: int = 0
    deployment_events: int = 0
    rollout_events: int = 0
    trigger_events: int = 0
    errors: list[str] = field(default_factory=list)


def run_retention(
    engine: Engine, policy: RetentionPolicy, *, now: datetime | None = None
) -> RetentionReport:
    """Apply ``policy`` once. A part that fails (a database hiccup) is logged and listed in
    ``errors``; the others still run, and the next run retries it."""
    now = now or datetime.now(UTC)
    report = RetentionReport()

    def cutoff(seconds: float | None) -> datetime | None:
        return now - timedelta(seconds=seconds) if seconds else None

    def part(name: str, seconds: float | None, run: Callable[[datetime], None]) -> None:
        older_than = cutoff(seconds)
        if older_than is None:
            return
        try:
            run(older_than)
        except Exception:
            log.exception("retention of %s failed", name)
            report.errors.append(name)

    def telemetry(older_than: datetime) -> None:
        result = rollup_and_prune(engine, older_than=older_than, monitored=policy.monitored)
        report.telemetry_windows = result.rolled_up

    def feedback(older_than: datetime) -> None:
        report.labels, report.field_samples = prune_feedback(
            engine,
            older_than=older_than,
            monitored=policy.monitored,
            field_records_kept=policy.field_records_kept,
        )

    def scores(older_than: datetime) -> None:
        report.monitor_scores = prune_monitor_scores(engine, older_than=older_than)

    def events(older_than: datetime) -> None:
        counts = prune_events(engine, older_than=older_than)
        report.alerts = counts["alert"]
        report.deployment_events = counts["deployment_event"]
        report.rollout_events = counts["rollout_event"]
        report.trigger_events = counts["trigger_event"]

    part("telemetry_window", policy.telemetry_s, telemetry)
    part("feedback", policy.feedback_s, feedback)
    part("monitor_score", policy.monitor_scores_s, scores)
    part("events", policy.events_s, events)
    return report


# --- feedback labels and field samples ------------------------------------------------------


def _field_keep_from(conn: Connection, *, kept: int) -> dict[str, int]:
    """Per model, the smallest field sample id among the newest ``kept`` labelled samples
    (rows of the join the retrain reads); 0 while there are fewer (all are kept)."""
    samples, labels = _table(FieldSample), _table(FeedbackLabelRow)
    joined = samples.join(
        labels,
        (labels.c.prediction_id == samples.c.prediction_id)
        & (labels.c.device_id == samples.c.device_id),
    )
    models = conn.execute(select(samples.c.model).distinct()).scalars().all()
    keep_from: dict[str, int] = {}
    for model in models:
        nth = conn.execute(
            select(samples.c.id)
            .select_from(joined)
            .where(samples.c.model == model, labels.c.label.is_not(None))
            .order_by(samples.c.id.desc())
            .offset(max(kept - 1, 0))
            .limit(1)
        ).scalar()
        keep_from[model] = int(nth) if nth is not None else 0
    return keep_from


def _samples_needed_from(conn: Connection, *, monitored: bool) -> dict[tuple[str, str], datetime]:
    """Per version with field samples, the oldest device time monitoring may still read
    samples from: the start of its oldest unread telemetry window or pending window."""
    samples, windows, cursors = (
        _table(FieldSample),
        _table(TelemetryWindowRow),
        _table(MonitorCursor),
    )
    heads = {
        (m, v): last
        for m, v, last in conn.execute(
            select(cursors.c.model, cursors.c.version, cursors.c.last_id).where(
                cursors.c.stream == "telemetry", cursors.c.scope == CURSOR_HEAD
            )
        ).all()
    }
    needed: dict[tuple[str, str], datetime] = {}

    def at_least(key: tuple[str, str], at: datetime) -> None:
        at = aware(at)
        needed[key] = min(needed.get(key, at), at)

    versions = conn.execute(select(samples.c.model, samples.c.version).distinct()).all()
    for model, version in versions:
        last = heads.get((model, version))
        if last is None and not monitored:
            continue  # nobody will read this version's windows
        start = conn.execute(
            select(func.min(windows.c.window_start)).where(
                windows.c.model == model, windows.c.version == version, windows.c.id > (last or 0)
            )
        ).scalar()
        if start is not None:
            at_least((model, version), start)
    pending = conn.execute(
        select(cursors.c.model, cursors.c.version, cursors.c.pending).where(
            cursors.c.stream == "telemetry", cursors.c.scope != CURSOR_HEAD
        )
    ).all()
    for model, version, partial in pending:
        start_ms = int((partial or {}).get("start_ms") or 0)
        if start_ms > 0:
            at_least((model, version), datetime.fromtimestamp(start_ms / 1000, UTC))
    return needed


def prune_feedback(
    engine: Engine,
    *,
    older_than: datetime,
    monitored: bool = False,
    field_records_kept: int = FIELD_RECORDS_KEPT,
) -> tuple[int, int]:
    """Delete labels and field samples received before ``older_than`` that no reader needs
    (module docstring); labels are rolled up into ``label_rollup`` first. Returns
    (labels, field samples) deleted."""
    with engine.connect() as conn:
        keep_from = _field_keep_from(conn, kept=field_records_kept)
        needed_from = _samples_needed_from(conn, monitored=monitored)
    return (
        _prune_labels(engine, older_than=older_than, monitored=monitored, keep_from=keep_from),
        _prune_samples(engine, older_than=older_than, keep_from=keep_from, needed_from=needed_from),
    )


def _kept_for_retrain(
    conn: Connection, keys: Iterable[tuple[str, str]], keep_from: dict[str, int]
) -> set[tuple[str, str]]:
    """Which (device id, prediction id) have a field sample the retrain still reads."""
    samples = _table(FieldSample)
    wanted = set(keys)
    if not wanted:
        return set()
    found = conn.execute(
        select(samples.c.device_id, samples.c.prediction_id, samples.c.id, samples.c.model).where(
            samples.c.prediction_id.in_({p for _, p in wanted})
        )
    ).all()
    return {
        (device, prediction)
        for device, prediction, sample_id, model in found
        if (device, prediction) in wanted and sample_id >= keep_from.get(model, 0)
    }


def _prune_labels(
    engine: Engine, *, older_than: datetime, monitored: bool, keep_from: dict[str, int]
) -> int:
    labels = _table(FeedbackLabelRow)
    prunable = and_(
        labels.c.received_at < older_than,
        read_by_monitoring(labels, stream="feedback", monitored=monitored),
    )
    deleted, after = 0, 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(
                    labels.c.id,
                    labels.c.device_id,
                    labels.c.prediction_id,
                    labels.c.label,
                    labels.c.predicted_label,
                    labels.c.model,
                    labels.c.version,
                    labels.c.received_at,
                )
                .where(prunable, labels.c.id > after)
                .order_by(labels.c.id)
                .limit(CHUNK)
            ).all()
            if not rows:
                return deleted
            after = rows[-1].id
            kept = _kept_for_retrain(
                conn,
                ((r.device_id, r.prediction_id) for r in rows if r.label is not None),
                keep_from,
            )
            gone = [
                r for r in rows if r.label is None or (r.device_id, r.prediction_id) not in kept
            ]
            if not gone:
                continue
            hours: dict[tuple[str, str, datetime], list[int]] = defaultdict(lambda: [0, 0, 0])
            for r in gone:
                acc = hours[(r.model, r.version, _hour(r.received_at))]
                acc[0] += 1
                if r.label is not None and r.predicted_label is not None:
                    acc[1] += 1
                    acc[2] += int(r.label == r.predicted_label)
            _merge_label_hours(conn, hours)
            conn.execute(delete(labels).where(labels.c.id.in_([r.id for r in gone])))
            deleted += len(gone)


def _merge_label_hours(conn: Connection, hours: dict[tuple[str, str, datetime], list[int]]) -> None:
    rollups = _table(LabelRollup)
    now = datetime.now(UTC)
    for (model, version, hour), (n, scored, correct) in hours.items():
        found = conn.execute(
            select(rollups.c.id, rollups.c.labels, rollups.c.scored, rollups.c.correct)
            .where(rollups.c.model == model, rollups.c.version == version, rollups.c.hour == hour)
            .with_for_update()
        ).first()
        if found is None:
            conn.execute(
                rollups.insert().values(
                    model=model,
                    version=version,
                    hour=hour,
                    labels=n,
                    scored=scored,
                    correct=correct,
                    updated_at=now,
                )
            )
        else:
            conn.execute(
                rollups.update()
                .where(rollups.c.id == found.id)
                .values(
                    labels=found.labels + n,
                    scored=found.scored + scored,
                    correct=found.correct + correct,
                    updated_at=now,
                )
            )


def _prune_samples(
    engine: Engine,
    *,
    older_than: datetime,
    keep_from: dict[str, int],
    needed_from: dict[tuple[str, str], datetime],
) -> int:
    samples, labels = _table(FieldSample), _table(FeedbackLabelRow)
    labelled = (
        select(labels.c.id)
        .where(
            labels.c.prediction_id == samples.c.prediction_id,
            labels.c.device_id == samples.c.device_id,
            labels.c.label.is_not(None),
        )
        .exists()
    )
    deleted, after = 0, 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(
                    samples.c.id,
                    samples.c.model,
                    samples.c.version,
                    samples.c.at,
                    labelled.label("labelled"),
                )
                .where(samples.c.received_at < older_than, samples.c.id > after)
                .order_by(samples.c.id)
                .limit(CHUNK)
            ).all()
            if not rows:
                return deleted
            after = rows[-1].id

            def needed(r: Any) -> bool:
                if r.labelled and r.id >= keep_from.get(r.model, 0):
                    return True  # the retrain reads it
                since = needed_from.get((r.model, r.version))
                return since is not None and aware(r.at) >= since

            gone = [r.id for r in rows if not needed(r)]
            if gone:
                conn.execute(delete(samples).where(samples.c.id.in_(gone)))
                deleted += len(gone)


# --- monitor scores ---------------------------------------------------------------------------

_SERIES = ("kind", "scope", "model", "version", "detector")


def prune_monitor_scores(engine: Engine, *, older_than: datetime) -> int:
    """Roll monitor scores older than ``older_than`` into ``monitor_score_rollup`` and delete
    them, keeping the newest score of each series. Returns the scores deleted."""
    scores = _table(MonitorScore)
    with engine.connect() as conn:
        newest = set(
            conn.execute(
                select(func.max(scores.c.id)).group_by(*(scores.c[name] for name in _SERIES))
            )
            .scalars()
            .all()
        )
    deleted, after = 0, 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(scores)
                .where(scores.c.at < older_than, scores.c.id > after)
                .order_by(scores.c.id)
                .limit(CHUNK)
            ).all()
            if not rows:
                return deleted
            after = rows[-1].id
            gone = [r for r in rows if r.id not in newest]
            if not gone:
                continue
            hours: dict[tuple[Any, ...], dict[str, Any]] = {}
            for r in gone:
                m = r._mapping
                key = (*(m[name] for name in _SERIES), _hour(m["at"]))
                _add_score(hours.setdefault(key, _score_acc()), m)
            _merge_score_hours(conn, hours)
            conn.execute(delete(scores).where(scores.c.id.in_([r.id for r in gone])))
            deleted += len(gone)


def _ratio(score: float, threshold: float) -> float:
    if threshold > 0:
        return score / threshold
    return float("inf") if score > 0 else 0.0


def _score_acc() -> dict[str, Any]:
    return {
        "scores": 0,
        "fired": 0,
        "n": 0,
        "score_sum": 0.0,
        "score_max": None,
        "ratio_max": None,
        "threshold": 0.0,
        "last_row_id": 0,
    }


def _add_score(acc: dict[str, Any], m: Any) -> None:
    score, threshold = float(m["score"]), float(m["threshold"])
    acc["scores"] += 1
    acc["fired"] += int(bool(m["fired"]))
    acc["n"] += int(m["n"])
    acc["score_sum"] += score
    acc["score_max"] = score if acc["score_max"] is None else max(acc["score_max"], score)
    ratio = min(_ratio(score, threshold), 1e300)  # JSON/SQL-safe "infinite"
    acc["ratio_max"] = ratio if acc["ratio_max"] is None else max(acc["ratio_max"], ratio)
    acc["last_row_id"] = max(acc["last_row_id"], int(m["last_row_id"]))
    acc["threshold"] = threshold  # rows come by id: the hour's last one wins


def _merge_score_hours(conn: Connection, hours: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    """Add a chunk's hours to ``monitor_score_rollup``: the rows of those hours are read (and
    locked) in one query, new ones inserted and the others updated in one ``executemany`` each."""
    rollups = _table(MonitorScoreRollup)
    now = datetime.now(UTC)
    existing = {
        (*(r._mapping[name] for name in _SERIES), _hour(r.hour)): r._mapping
        for r in conn.execute(
            select(rollups)
            .where(
                rollups.c.hour.in_({key[-1] for key in hours}),
                rollups.c.model.in_({key[2] for key in hours}),
            )
            .with_for_update()
        ).all()
    }
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for key, acc in hours.items():
        *series, hour = key
        values = {
            "scores": acc["scores"],
            "fired": acc["fired"],
            "n": acc["n"],
            "score_sum": acc["score_sum"],
            "score_max": acc["score_max"],
            "ratio_max": acc["ratio_max"],
            "threshold": acc["threshold"],  # chunks go by id: this one is newer
            "last_row_id": acc["last_row_id"],
            "updated_at": now,
        }
        cur = existing.get(key)
        if cur is None:
            inserts.append({**dict(zip(_SERIES, series, strict=True)), "hour": hour, **values})
            continue
        for name in ("scores", "fired", "n", "score_sum"):
            values[name] += cur[name]
        for name in ("score_max", "ratio_max", "last_row_id"):
            values[name] = max(values[name], cur[name])
        updates.append({"_id": cur["id"], **values})
    if inserts:
        conn.execute(rollups.insert(), inserts)
    if updates:
        conn.execute(rollups.update().where(rollups.c.id == bindparam("_id")), updates)


# --- events -----------------------------------------------------------------------------------


def _delete_chunks(engine: Engine, rows: Table, where: ColumnElement[bool]) -> int:
    deleted = 0
    while True:
        with engine.begin() as conn:
            ids = (
                conn.execute(select(rows.c.id).where(where).order_by(rows.c.id).limit(CHUNK))
                .scalars()
                .all()
            )
            if not ids:
                return deleted
            conn.execute(delete(rows).where(rows.c.id.in_(ids)))
            deleted += len(ids)


def prune_events(engine: Engine, *, older_than: datetime) -> dict[str, int]:
    """Delete resolved alerts, deployment events, finished rollouts' events and trigger
    events older than ``older_than`` that nothing reads any more (module docstring).
    Returns the rows deleted per table."""
    alerts, deployments = _table(Alert), _table(DeploymentEventRow)
    rollouts, rollout_events = _table(Rollout), _table(RolloutEvent)
    devices, shadows, triggers = _table(RolloutDevice), _table(RolloutShadow), _table(TriggerEvent)
    datasets = _table(DatasetVersion)
    open_rollouts = select(rollouts.c.id).where(rollouts.c.finished_at.is_(None))
    open_commands = (
        select(devices.c.command_id)
        .where(devices.c.rollout_id.in_(open_rollouts), devices.c.command_id != "")
        .union(
            select(devices.c.rollback_command_id).where(
                devices.c.rollout_id.in_(open_rollouts), devices.c.rollback_command_id != ""
            ),
            select(shadows.c.command_id).where(
                shadows.c.rollout_id.in_(open_rollouts), shadows.c.command_id != ""
            ),
            select(shadows.c.stop_command_id).where(
                shadows.c.rollout_id.in_(open_rollouts), shadows.c.stop_command_id != ""
            ),
        )
    )
    finished_before = select(rollouts.c.id).where(rollouts.c.finished_at < older_than)
    latest_datasets = select(func.max(datasets.c.id)).group_by(datasets.c.name)
    return {
        "alert": _delete_chunks(
            engine,
            alerts,
            and_(alerts.c.resolved_at.is_not(None), alerts.c.resolved_at < older_than),
        ),
        "deployment_event": _delete_chunks(
            engine,
            deployments,
            and_(
                deployments.c.received_at < older_than,
                deployments.c.rollout_id.not_in(open_rollouts),
                deployments.c.command_id.not_in(open_commands),
            ),
        ),
        "rollout_event": _delete_chunks(
            engine, rollout_events, rollout_events.c.rollout_id.in_(finished_before)
        ),
        "trigger_event": _delete_chunks(
            engine,
            triggers,
            and_(
                triggers.c.at < older_than,
                triggers.c.status != TriggerStatus.STARTED.value,
                or_(
                    triggers.c.status != TriggerStatus.SKIPPED.value,
                    triggers.c.dataset_version_id.is_(None),
                    triggers.c.dataset_version_id.not_in(latest_datasets),
                ),
            ),
        ),
    }


# --- readers of the roll-ups -----------------------------------------------------------------


def rolled_up_correct(
    session: Session, *, model: str, version: str, since: datetime | None = None
) -> tuple[int, int]:
    """(correct, scored) of ``model@version``'s pruned labels, of whole hours from ``since``
    on (a label counts if its hour starts at or after ``since``)."""
    query = sql_select(
        func.coalesce(func.sum(LabelRollup.correct), 0),
        func.coalesce(func.sum(LabelRollup.scored), 0),
    ).where(LabelRollup.model == model, LabelRollup.version == version)
    if since is not None:
        query = query.where(col(LabelRollup.hour) >= since)
    correct, scored = session.exec(query).one()
    return int(correct), int(scored)


def rolled_up_drift(
    session: Session, *, model: str, version: str, since: datetime | None = None
) -> float | None:
    """The largest drift ``score / threshold`` among ``model@version``'s pruned scores (whole
    hours from ``since`` on); None when none were pruned."""
    query = sql_select(func.max(MonitorScoreRollup.ratio_max)).where(
        MonitorScoreRollup.kind == "drift",
        MonitorScoreRollup.model == model,
        MonitorScoreRollup.version == version,
    )
    if since is not None:
        query = query.where(col(MonitorScoreRollup.hour) >= since)
    found = session.exec(query).one()
    return None if found is None else float(found)


class RetentionLoop(Periodic):
    """Runs :func:`run_retention` every ``every_s`` (first after ``first_after_s``) in a
    background thread until :meth:`stop`; a failure is logged and retried next time."""

    name = "retention"

    def __init__(
        self,
        *,
        engine: Engine,
        policy: RetentionPolicy,
        every_s: float = EVERY_S,
        first_after_s: float = 60.0,
    ) -> None:
        super().__init__(
            interval_s=every_s,
            log=log,
            thread_name="edgeloop-retention",
            first_after_s=first_after_s,
            what="retention",
        )
        self._engine, self._policy = engine, policy
        self.reports: list[RetentionReport] = []

    def tick(self) -> None:
        report = run_retention(self._engine, self._policy)
        self.reports = [*self.reports[-9:], report]
        log.info("retention: %s", report)


def retention_service(settings: HubSettings) -> Owning | None:
    """The hourly retention service ``hub serve`` runs (own engine), not yet started; None
    when every retention setting keeps rows forever."""
    policy = RetentionPolicy.from_settings(settings)
    if not policy.enabled:
        return None
    engine = make_engine(settings.resolved_database_url)
    return Owning(RetentionLoop(engine=engine, policy=policy), engine.dispose)
