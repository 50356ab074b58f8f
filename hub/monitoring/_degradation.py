"""Degradation: a version's new labels, per scope, against the accuracy it was evaluated at.

Per scope the cursor row keeps the correctness of the last ``label_window`` labels (a
``"0"``/``"1"`` string), so the Wilson test runs on a trailing window without re-reading
labels; the sequential detectors (``needs`` has ``correct``) see every new label in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from hub.monitoring._alerts import AlertBook, Finding
from hub.monitoring._cache import DetectorCache, DetectorSettings
from hub.monitoring._cursors import next_batch, scope_rows
from hub.monitoring._reference import VersionReference
from hub.monitoring._report import MonitorReport
from hub.monitoring._samples import aware
from hub.monitoring._windows import scopes_of
from hub.monitoring.accuracy import degradation_test
from hub.monitoring.budget import Budget, RateMeter
from hub.tables.devices import Device
from hub.tables.fleet import FeedbackLabelRow, TelemetryWindowRow
from hub.tables.monitoring import MonitorCursor

log = logging.getLogger("edgeloop.monitor")
STREAM = "feedback"
WILSON = "wilson_accuracy"


def evaluate_degradation(
    session: Session,
    *,
    model: str,
    version: str,
    settings: DetectorSettings,
    min_labels: int,
    cache: DetectorCache,
    book: AlertBook,
    report: MonitorReport,
    batch_rows: int,
) -> int:
    """Evaluate up to ``batch_rows`` new labels of ``model@version``; returns how many were read."""
    labels = next_batch(
        session,
        table=FeedbackLabelRow,
        stream=STREAM,
        model=model,
        version=version,
        limit=batch_rows,
    )
    if not labels:
        return 0
    usable = [r for r in labels if r.label is not None and r.predicted_label is not None]
    if len(usable) < len(labels):
        report.skip("labels without a class label or prediction", len(labels) - len(usable))
    if not usable:
        return len(labels)
    ref = cache.reference(session, model=model, version=version)
    if ref is None or ref.accuracy is None:
        report.skip(f"{model}@{version}: no evaluated accuracy to compare with", len(usable))
        return len(labels)
    meter = cache.labels.setdefault((model, version), RateMeter())
    newest = max(r.received_at for r in usable)
    meter.add(aware(newest), len(usable))
    groups = device_groups(session, (r.device_id for r in usable))
    streams: dict[str, list[bool]] = {}
    last_ids: dict[str, int] = {}
    for r in usable:
        for scope in scopes_of(
            model=model, version=version, device_id=r.device_id, group=groups[r.device_id]
        ):
            streams.setdefault(scope, []).append(r.label == r.predicted_label)
            last_ids[scope] = int(r.id or 0)
    report.labels += len(usable)
    cursors = scope_rows(session, stream=STREAM, model=model, version=version, scopes=streams)
    for scope, oks in streams.items():
        found = cursors.get(scope) or MonitorCursor(
            stream=STREAM, model=model, version=version, scope=scope
        )
        recent = str(found.pending.get("recent", "")) + "".join("1" if ok else "0" for ok in oks)
        recent = recent[-settings.label_window :]
        n, correct = len(recent), recent.count("1")
        detail: dict[str, Any] = {
            "labels": n,
            "correct": correct,
            "evaluated_accuracy": ref.accuracy,
        }
        if n >= min_labels:
            rate = settings.false_alarm_rate
            if settings.per_day is not None:  # the new labels' share of the fleet budget
                rate = Budget(settings.per_day).rate(n=len(oks), per_day=meter.per_day())
                detail = {**detail, "false_alarm_rate": rate}
            test = degradation_test(
                correct=correct,
                n=n,
                reference=ref.accuracy,
                margin=settings.accuracy_margin,
                false_alarm_rate=rate,
            )
            book.record(
                Finding(
                    kind="degradation",
                    scope=scope,
                    detector=WILSON,
                    score=test.score,
                    threshold=test.threshold,
                    p_value=test.p_value,
                    fired=test.fired,
                    n=n,
                    last_row_id=last_ids[scope],
                    detail={**detail, **test.estimate.to_json()},
                )
            )
        _sequential(
            oks,
            scope=scope,
            ref=ref,
            settings=settings,
            cache=cache,
            book=book,
            report=report,
            last_id=last_ids[scope],
            detail=detail,
        )
        found.pending = {"recent": recent, "labels": int(found.pending.get("labels", 0)) + len(oks)}
        found.last_id, found.updated_at = last_ids[scope], book.now
        session.add(found)
    return len(labels)


def _sequential(
    oks: list[bool],
    *,
    scope: str,
    ref: VersionReference,
    settings: DetectorSettings,
    cache: DetectorCache,
    book: AlertBook,
    report: MonitorReport,
    last_id: int,
    detail: dict[str, Any],
) -> None:
    from hub.monitoring.detectors import Window

    window = Window(n=len(oks), correct=np.asarray(oks, dtype=bool))
    for detector in cache.detectors(ref, settings, stream=STREAM, scope=scope):
        try:
            detector.update(window)
            finding = Finding(
                kind="degradation",
                scope=scope,
                detector=detector.name,
                score=float(detector.score),
                threshold=float(detector.threshold),
                p_value=None if detector.p_value is None else float(detector.p_value),
                fired=bool(detector.drift_detected),
                n=len(oks),
                last_row_id=last_id,
                detail=dict(detail),
            )
        except Exception as exc:
            report.skip(f"detector {detector.name} failed: {type(exc).__name__}")
            log.exception("detector %s failed on %s", detector.name, scope)
            continue
        book.record(finding)


def device_groups(session: Session, device_ids: Iterable[str]) -> dict[str, str]:
    """Each device's group: the registry's, else the group of its latest telemetry."""
    ids = sorted(set(device_ids))
    groups = {
        d.id: d.group for d in session.exec(select(Device).where(col(Device.id).in_(ids))).all()
    }
    for device_id in ids:
        if device_id not in groups:
            latest = session.exec(
                select(TelemetryWindowRow.group)
                .where(TelemetryWindowRow.device_id == device_id)
                .order_by(col(TelemetryWindowRow.id).desc())
                .limit(1)
            ).first()
            groups[device_id] = latest or "default"
    return groups
