"""Drift: a version's new telemetry rows, summed per scope into windows, run through the
scope's detectors; every score recorded, alerts through the :class:`AlertBook`."""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from hub.monitoring._alerts import AlertBook, Finding
from hub.monitoring._cache import DetectorCache, DetectorSettings
from hub.monitoring._cursors import next_batch, scope_rows
from hub.monitoring._reference import VersionReference
from hub.monitoring._report import MonitorReport
from hub.monitoring._samples import NewSamples, sample_values
from hub.monitoring._windows import BadRow, Partial, row_counts, scopes_of
from hub.tables.fleet import TelemetryWindowRow
from hub.tables.monitoring import MonitorCursor

log = logging.getLogger("edgeloop.monitor")
STREAM = "telemetry"
SAMPLES_PER_ROW = 50  # samples read per telemetry row of a batch, at most (the rest: next)


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
    rows = next_batch(
        session,
        table=TelemetryWindowRow,
        stream=STREAM,
        model=model,
        version=version,
        limit=batch_rows,
    )
    if not rows:
        return 0
    ref = cache.reference(
        session, model=model, version=version, bundle_digest=rows[-1].bundle_digest
    )
    if ref is None:
        report.skip(f"{model}@{version}: no bundle with a reference profile", len(rows))
        return len(rows)
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
    cursors = scope_rows(session, stream=STREAM, model=model, version=version)
    partials: dict[str, Partial] = {}
    for row in rows:
        carried = samples.of_row(row)
        try:
            counts = row_counts(row, ref)
        except BadRow as exc:
            report.skip(f"bad telemetry row: {exc}")
            log.warning("telemetry row %s of %s skipped: %s", row.id, row.device_id, exc)
            continue
        report.rows += 1
        for scope in scopes_of(
            model=model, version=version, device_id=row.device_id, group=row.group
        ):
            partial = partials.get(scope)
            if partial is None:
                partial = Partial.from_json(cursors[scope].pending if scope in cursors else {})
            partial.add(int(row.id or 0), counts, samples=carried)
            if partial.n >= settings.window_size:
                scope_ref = ref.for_scope(scope, group=row.group)
                if scope_ref is not None:  # None: a scope this version does not test
                    _run_window(
                        session,
                        partial,
                        ref=scope_ref,
                        scope=scope,
                        settings=settings,
                        cache=cache,
                        book=book,
                        report=report,
                    )
                partial = Partial()
            partials[scope] = partial
    for scope, partial in partials.items():
        found = cursors.get(scope) or MonitorCursor(
            stream=STREAM, model=model, version=version, scope=scope
        )
        found.pending, found.last_id, found.updated_at = (
            partial.to_json(),
            partial.last_id,
            book.now,
        )
        session.add(found)
    return len(rows)


def _run_window(
    session: Session,
    partial: Partial,
    *,
    ref: VersionReference,
    scope: str,
    settings: DetectorSettings,
    cache: DetectorCache,
    book: AlertBook,
    report: MonitorReport,
) -> None:
    from hub.monitoring.detectors._base import Window

    kwargs = partial.window_kwargs(ref)
    if ref.samples is not None:  # raw reference rows: feed the window's raw inputs too
        dims = int(ref.samples.shape[1])
        samples = sample_values(session, partial.sample_ids, dims=dims)
        if samples is not None:
            kwargs["samples"] = samples
    window = Window(**kwargs)
    available = set(kwargs) | {"n"}
    report.windows += 1
    for detector in cache.detectors(ref, settings, stream=STREAM, scope=scope):
        if not detector.needs <= available:
            continue
        try:
            detector.update(window)
            finding = Finding(
                kind="drift",
                scope=scope,
                detector=detector.name,
                score=float(detector.score),
                threshold=float(detector.threshold),
                p_value=None if detector.p_value is None else float(detector.p_value),
                fired=bool(detector.drift_detected),
                n=partial.n,
                last_row_id=partial.last_id,
                detail=_detail(partial),
            )
        except Exception as exc:  # one detector failing must not stop the others
            report.skip(f"detector {detector.name} failed: {type(exc).__name__}")
            log.exception("detector %s failed on %s", detector.name, scope)
            continue
        book.record(finding)


def _detail(partial: Partial) -> dict[str, Any]:
    return {
        "predictions": partial.n,
        "telemetry_windows": partial.rows,
        "first_row_id": partial.first_id,
        "last_row_id": partial.last_id,
    }
