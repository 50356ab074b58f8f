"""Drift: a version's new telemetry rows, summed per scope into windows, run through the
scope's detectors; every score recorded, alerts through the :class:`AlertBook`.

Cost per batch: one query for the rows (plain columns, no ORM objects), one for their
samples, a count vector per row (:class:`Layout`) added into each of its three scopes' open
windows (in memory, :class:`ScopeWindow`); a completed window costs its detectors, one
query for its samples' values, and its cursor row. Scopes not in memory (a restart, an
evicted idle scope) are rebuilt from the rows past their last completed window, one query
per batch for all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from hub.monitoring._alerts import AlertBook, Finding
from hub.monitoring._cache import DetectorCache, DetectorSettings, ScopeStates
from hub.monitoring._cursors import chunks, count_rows, head, scope_rows
from hub.monitoring._reference import VersionReference
from hub.monitoring._report import MonitorReport
from hub.monitoring._samples import NewSamples, aware, sample_values
from hub.monitoring._windows import BadRow, Layout, ScopeWindow, scopes_of
from hub.monitoring.budget import Budget
from hub.tables.fleet import FieldSample, TelemetryWindowRow
from hub.tables.monitoring import MonitorCursor

log = logging.getLogger("edgeloop.monitor")
STREAM = "telemetry"
SAMPLES_PER_ROW = 50  # samples read per telemetry row of a batch, at most (the rest: next)

_T = TelemetryWindowRow
COLUMNS = tuple(
    col(c)
    for c in (
        _T.id,
        _T.device_id,
        _T.group,
        _T.bundle_digest,
        _T.window_end,
        _T.received_at,
        _T.count,
        _T.output_counts,
        _T.confidence,
        _T.features,  # rows from before the packed column
        _T.packed,  # the sketches (hub.tables.packed)
    )
)


def evaluate_drift(
    session: Session,
    *,
    model: str,
    version: str,
    settings: DetectorSettings,
    cache: DetectorCache,
    book: AlertBook,
    report: MonitorReport,
    batch_rows: int,
) -> int:
    """Evaluate up to ``batch_rows`` new rows of ``model@version``; returns how many were read."""
    cursor = head(session, stream=STREAM, model=model, version=version)
    start = cursor.last_id
    rows: list[Any] = list(
        session.execute(
            sa_select(*COLUMNS)
            .where(col(_T.model) == model, col(_T.version) == version, col(_T.id) > start)
            .order_by(col(_T.id))
            .limit(batch_rows)
        ).all()
    )
    if not rows:
        return 0
    cursor.last_id = int(rows[-1].id)
    seen = cache.devices.setdefault((model, version), set())
    count_rows(session, cursor, rows, before=start, seen=seen)
    session.add(cursor)
    ref = cache.reference(
        session, model=model, version=version, bundle_digest=rows[-1].bundle_digest
    )
    if ref is None:
        report.skip(f"{model}@{version}: no bundle with a reference profile", len(rows))
        return len(rows)
    states = cache.scope_states(ref)
    wanted = ref.samples is not None or any(r.samples is not None for r in ref.scopes.values())
    samples = NewSamples.read(
        session,
        model=model,
        version=version,
        limit=SAMPLES_PER_ROW * batch_rows,
        # a full batch: later commits' samples belong to rows of the next one
        until=rows[-1].received_at if len(rows) >= batch_rows else None,
        wanted=wanted,
    )
    samples.plan(rows)
    members: dict[str, list[tuple[Any, Any, list[int]]]] = {}
    predictions = 0
    for row in rows:
        carried = samples.of_row(row)
        try:
            vector = states.layout.row_vector(row)
        except BadRow as exc:
            report.skip(f"bad telemetry row: {exc}")
            log.warning("telemetry row %s of %s skipped: %s", row.id, row.device_id, exc)
            continue
        report.rows += 1
        predictions += int(row.count)
        for scope in scopes_of(
            model=model, version=version, device_id=row.device_id, group=row.group
        ):
            members.setdefault(scope, []).append((row, vector, carried))
    _restore(
        session,
        states,
        [s for s in members if s not in states.windows],
        model=model,
        version=version,
        before=int(rows[0].id),
        sample_before=samples.start,
    )
    if predictions:
        states.predictions.add(aware(rows[-1].received_at), predictions)
    completed: dict[str, ScopeWindow] = {}
    for scope, found in members.items():
        window = states.windows[scope]
        group = found[0][0].group
        # a group's or version's window closes at the batch's end (by_batch), a device's
        # as soon as it has its predictions
        by_batch = settings.aggregate_by_batch and not scope.startswith("device:")
        last = len(found) - 1
        for i, (row, vector, carried) in enumerate(found):
            window.add(int(row.id), int(row.count), vector, carried, at=row.received_at)
            if window.n < settings.window_size or (by_batch and i < last):
                continue
            scope_ref = ref.for_scope(scope, group=group)
            if scope_ref is not None:  # None: a scope this version does not test
                _run_window(
                    session,
                    window,
                    layout=states.layout,
                    ref=scope_ref,
                    scope=scope,
                    settings=settings,
                    cache=cache,
                    book=book,
                    report=report,
                    per_day=states.predictions.per_day(),
                )
            completed[scope] = window
            window = states.windows[scope] = ScopeWindow.empty(states.layout)
    _save_boundaries(session, completed, model=model, version=version, now=book.now)
    states.touch(members)
    return len(rows)


def _run_window(
    session: Session,
    window: ScopeWindow,
    *,
    layout: Layout,
    ref: VersionReference,
    scope: str,
    settings: DetectorSettings,
    cache: DetectorCache,
    book: AlertBook,
    report: MonitorReport,
    per_day: float,
) -> None:
    from hub.monitoring.detectors import Window

    n, counts = window.n, window.counts
    if n > settings.max_window:  # a big aggregate window: a sample of its predictions
        n, counts = (
            settings.max_window,
            layout.thin(counts, settings.max_window, seed=window.last_id),
        )
    kwargs = layout.window_kwargs(n, counts)
    if ref.samples is not None:  # raw reference rows: feed the window's raw inputs too
        values = sample_values(session, window.sample_ids, dims=int(ref.samples.shape[1]))
        if values is not None:
            kwargs["samples"] = values
    observed = Window(**kwargs)
    available = set(kwargs) | {"n"}
    report.windows += 1
    detectors = [
        d
        for d in cache.detectors(ref, settings, stream=STREAM, scope=scope)
        if d.needs <= available
    ]
    rate = None
    if settings.per_day is not None:  # this window's share of the fleet's budget
        rate = Budget(settings.per_day).rate(n=window.n, per_day=per_day, detectors=len(detectors))
    for detector in detectors:
        try:
            detector.update(observed)
            score = float(detector.score)
            if rate is None:
                threshold, fired = float(detector.threshold), bool(detector.drift_detected)
            else:
                threshold = float(detector.threshold_at(rate))
                fired = score > threshold
            detail = window.detail()
            if rate is not None:
                detail["false_alarm_rate"] = rate
            finding = Finding(
                kind="drift",
                scope=scope,
                detector=detector.name,
                score=score,
                threshold=threshold,
                p_value=None if detector.p_value is None else float(detector.p_value),
                fired=fired,
                n=window.n,
                last_row_id=window.last_id,
                detail=detail,
                at=window.evidence_at,
            )
        except Exception as exc:  # one detector failing must not stop the others
            report.skip(f"detector {detector.name} failed: {type(exc).__name__}")
            log.exception("detector %s failed on %s", detector.name, scope)
            continue
        book.record(finding)


def _restore(
    session: Session,
    states: ScopeStates,
    scopes: Sequence[str],
    *,
    model: str,
    version: str,
    before: int,
    sample_before: int,
) -> None:
    """Open windows of ``scopes`` not in memory, rebuilt from their rows after the last
    completed window (``boundary`` in the scope's cursor row) and before this batch."""
    if not scopes:
        return
    boundaries = _boundaries(session, scopes, model=model, version=version)
    for scope in scopes:
        states.windows[scope] = ScopeWindow.empty(states.layout)
    by_kind: dict[str, list[str]] = {}
    for scope in scopes:
        kind, _, name = scope.partition(":")
        by_kind.setdefault(kind, []).append(name)
    oldest = min(boundaries.get(s, (0, 0))[0] for s in scopes)
    query = sa_select(*COLUMNS).where(
        col(_T.model) == model, col(_T.version) == version, col(_T.id) > oldest, col(_T.id) < before
    )
    found: list[Any] = []
    if "version" in by_kind:
        found = list(session.execute(query.order_by(col(_T.id))).all())
    else:
        for column, kind in ((_T.device_id, "device"), (_T.group, "group")):
            for chunk in chunks(by_kind.get(kind, [])):
                found += session.execute(query.where(col(column).in_(chunk))).all()
        found.sort(key=lambda r: r.id)
    if not found:
        return
    wanted = set(scopes)
    restored: dict[str, list[Any]] = {}
    for row in found:
        for scope in scopes_of(
            model=model, version=version, device_id=row.device_id, group=row.group
        ):
            if scope in wanted and row.id > boundaries.get(scope, (0, 0))[0]:
                restored.setdefault(scope, []).append(row)
    devices = sorted({r.device_id for rows in restored.values() for r in rows})
    by_device = _samples_of(
        session,
        devices,
        model=model,
        version=version,
        after=min(boundaries.get(s, (0, 0))[1] for s in scopes),
        until=sample_before,
    )
    for scope, rows in restored.items():
        window = states.windows[scope]
        after = boundaries.get(scope, (0, 0))[1]
        for row in rows:
            try:
                vector = states.layout.row_vector(row)
            except BadRow:  # skipped and counted when it was first read
                continue
            window.add(int(row.id), int(row.count), vector, at=row.received_at)
        carried = sorted(
            i for d in {r.device_id for r in rows} for i in by_device.get(d, []) if i > after
        )
        if carried:
            window.add_samples(carried)


def _boundaries(
    session: Session, scopes: Sequence[str], *, model: str, version: str
) -> dict[str, tuple[int, int]]:
    """Per scope: (last row, last sample) of its last completed window."""
    found = scope_rows(session, stream=STREAM, model=model, version=version, scopes=scopes)
    return {scope: boundary_of(c) for scope, c in found.items()}


def boundary_of(cursor: MonitorCursor) -> tuple[int, int]:
    """(last row, last sample) of the scope's last completed window; a cursor written before
    windows were kept in memory holds its open window's counts: it ended before them."""
    pending = cursor.pending or {}
    if "boundary" in pending:
        return int(pending["boundary"]), int(pending.get("sample_boundary", 0))
    if int(pending.get("rows", 0)) > 0:
        return int(pending.get("first_id", 1)) - 1, 0
    return int(cursor.last_id), 0


def _samples_of(
    session: Session, devices: Sequence[str], *, model: str, version: str, after: int, until: int
) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    if until <= after:
        return out
    for chunk in chunks(list(devices)):
        for sample_id, device_id in session.exec(
            select(FieldSample.id, FieldSample.device_id).where(
                FieldSample.model == model,
                FieldSample.version == version,
                col(FieldSample.id) > after,
                col(FieldSample.id) <= until,
                col(FieldSample.device_id).in_(chunk),
            )
        ).all():
            out.setdefault(device_id, []).append(int(sample_id or 0))
    return out


def _save_boundaries(
    session: Session, completed: dict[str, ScopeWindow], *, model: str, version: str, now: datetime
) -> None:
    """Each scope's cursor row: where its newest completed window ended."""
    if not completed:
        return
    existing = scope_rows(session, stream=STREAM, model=model, version=version, scopes=completed)
    for scope, window in completed.items():
        found = existing.get(scope) or MonitorCursor(
            stream=STREAM, model=model, version=version, scope=scope
        )
        found.last_id, found.updated_at = window.last_id, now
        found.pending = {"boundary": window.last_id, "sample_boundary": window.last_sample_id}
        session.add(found)
