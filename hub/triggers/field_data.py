"""Field data: reservoir samples that devices sent, with the labels that came back for them,
merged into a new version of a dataset (validated like any other version).

A field record's id is ``field:<device>:<prediction id>``, followed by ``#<source>`` when the
label named the record the input was drawn from (the record then takes its source's split, see
``hub.datasets.splits``), so the same sample is never added twice and its origin stays
readable; the version's lineage says which devices, model versions and time range the records
came from.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlmodel import Session, col, select

from hub.core.artifacts import ArtifactStore
from hub.core.errors import InvalidInput
from hub.datasets import service as datasets
from hub.datasets.records import RecordSet
from hub.datasets.splits import SOURCE_MARK
from hub.datasets.validation import ValidationReport
from hub.tables import DatasetVersion
from hub.tables.fleet import FeedbackLabelRow, FieldSample
from hub.triggers.label_quality import (
    DEFAULT_DEVICE_SHARE,
    quarantined_records,
    screen_field_records,
)

log = logging.getLogger("edgeloop.triggers")

# checks a shift in the field can fail without the data being wrong
SHIFT_CHECKS = frozenset({"feature_drift", "label_drift", "value_ranges"})


@dataclass(frozen=True, kw_only=True)
class FieldImport:
    version: DatasetVersion
    created: bool
    records: int  # labelled field records kept (new and already known)
    skipped: int  # samples whose shape does not fit the dataset
    overridden: bool = False
    quarantined: tuple[str, ...] = ()  # devices whose labels were left out
    capped: int = 0  # records left out by the per-device share cap


def labelled_field_records(
    session: Session,
    *,
    model: str,
    like: RecordSet,
    limit: int = 20_000,
    since: datetime | None = None,
) -> tuple[RecordSet | None, dict[str, object], int, list[tuple[str, datetime]]]:
    """The newest ``limit`` field samples of ``model`` that have a label (taken at or after
    ``since`` when given), as records shaped and named like ``like`` (newest first); also their
    provenance, how many samples did not fit, and each record's device and time."""
    query = (
        select(FieldSample, FeedbackLabelRow)
        .join(
            FeedbackLabelRow,
            (col(FeedbackLabelRow.prediction_id) == col(FieldSample.prediction_id))
            & (col(FeedbackLabelRow.device_id) == col(FieldSample.device_id)),
        )
        .where(FieldSample.model == model, col(FeedbackLabelRow.label).is_not(None))
    )
    if since is not None:
        query = query.where(col(FieldSample.at) >= since)
    rows = session.exec(query.order_by(col(FieldSample.id).desc()).limit(limit)).all()
    shape = like.feature_shape
    width = math.prod(shape)
    ids: list[str] = []
    features: list[list[float]] = []
    labels: list[int] = []
    seen: set[str] = set()
    devices: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    times = []
    owners: list[tuple[str, datetime]] = []
    skipped = 0
    for sample, label in rows:
        rid = f"field:{sample.device_id}:{sample.prediction_id}"
        if label.source:  # the split follows the source record (hub.datasets.splits)
            rid += f"{SOURCE_MARK}{label.source}"
        if rid in seen:
            continue
        if len(sample.values) != width or label.label is None or label.label < 0:
            skipped += 1
            continue
        seen.add(rid)
        ids.append(rid)
        features.append(sample.values)
        labels.append(int(label.label))
        devices[sample.device_id] += 1
        versions[f"{sample.model}@{sample.version}"] += 1
        times.append(sample.at)
        owners.append((sample.device_id, sample.at))
    provenance: dict[str, object] = {
        "model": model,
        "devices": dict(devices),
        "model_versions": dict(versions),
        "from": min(times).isoformat() if times else None,
        "to": max(times).isoformat() if times else None,
    }
    if not ids:
        return None, provenance, skipped, owners
    records = RecordSet(
        ids=np.asarray(ids),
        features=np.asarray(features, dtype=np.float32).reshape(len(ids), *shape),
        labels=np.asarray(labels, dtype=np.int64),
        feature_names=like.feature_names,
        label_names=like.label_names,
    )
    return records, provenance, skipped, owners


def import_field_data(
    session: Session,
    store: ArtifactStore,
    *,
    dataset: str,
    model: str,
    min_records: int = 1,
    shift_expected: str | None = None,
    since: datetime | None = None,
    device_share: float = DEFAULT_DEVICE_SHARE,
) -> FieldImport | None:
    """Append ``model``'s labelled field samples (taken at or after ``since``, when given) to
    ``dataset`` as its next version.

    Returns None while fewer than ``min_records`` labelled samples exist. With
    ``shift_expected`` (a reason, e.g. the drift alert being answered), a version that fails
    only distribution checks is overridden with that reason: drifted field data is *meant* to
    differ from the training data. Schema failures are never overridden.

    Devices whose labels disagree with the fleet's consensus far beyond chance are
    quarantined and left out, and no device keeps more than ``max(2/N, device_share)`` of the
    field records (:mod:`hub.triggers.label_quality`); the lineage records both. The bound
    holds for the version, not just for what is new: field records the parent took that are
    offered again but not kept now (over the cap, or from a device quarantined since; also
    a quarantined device's older ones) are dropped, and the version is then a snapshot.
    """
    parent = datasets.get_version(session, ref=f"{dataset}@latest")
    like = datasets.load_records(session, store, version=parent)
    records, provenance, skipped, owners = labelled_field_records(
        session, model=model, like=like, since=since
    )
    if records is None:
        return None
    offered = records.ids
    screening = screen_field_records(
        session, model=model, records=records, owners=owners, share=device_share
    )
    records, provenance = screening.records, {**provenance, **screening.lineage()}
    if records is None or len(records) < min_records:
        return None
    drop = np.isin(like.ids, offered) & ~np.isin(like.ids, records.ids)
    drop |= quarantined_records(session, model=model, records=like)
    provenance["dropped_from_parent"] = int(drop.sum())
    merged, append = (like.subset(~drop).merge(records), False) if drop.any() else (records, True)
    try:
        version, created = datasets.import_dataset(
            session, store, name=dataset, source=f"field:{model}", records=merged, append=append
        )
    except InvalidInput:
        log.exception("field data for %s does not fit dataset %s", model, dataset)
        raise
    overridden = False
    if created:
        version.lineage = {**version.lineage, "field": {**provenance, "records": len(records)}}
        session.add(version)
        report = ValidationReport.model_validate(version.validation)
        failed = {c.name for c in report.failures()}
        if failed and failed <= SHIFT_CHECKS and shift_expected:
            datasets.override_validation(
                session,
                ref=version.ref,
                reason=f"field data for {shift_expected}; failed only {sorted(failed)}, "
                "a distribution shift is expected",
            )
            overridden = True
        session.flush()
    return FieldImport(
        version=version,
        created=created,
        records=len(records),
        skipped=skipped,
        overridden=overridden,
        quarantined=tuple(screening.quarantined),
        capped=sum(screening.capped.values()),
    )
