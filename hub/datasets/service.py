"""Dataset versions in the database, their records in the artifact store.

Plain keyword-only functions over a session and a store; the API and the CLI call these.
A version is immutable: importing the same content again returns the existing version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from hub._lazy import module
from hub.core.artifacts import ArtifactStore, sha256_digest
from hub.core.errors import Conflict, DatasetInvalid, InvalidInput, NotFound, parse_ref
from hub.datasets.reports import DatasetSchema, ValidationReport
from hub.tables import DatasetVersion, DatasetVersionPublic

if TYPE_CHECKING:
    import numpy as np

    from hub.datasets import records as _records
    from hub.datasets import sources, splits, validation
    from hub.datasets.records import RecordSet
else:
    # numpy and the record code on first use: listing and showing versions (the CLI's
    # `dataset list`, ~0.1 s of its start) touch no records
    np = module("numpy")
    sources = module("hub.datasets.sources")
    splits = module("hub.datasets.splits")
    validation = module("hub.datasets.validation")
    _records = module("hub.datasets.records")

DEFAULT_ALPHA = 0.01


def get_version(session: Session, *, ref: str) -> DatasetVersion:
    """``NAME@N`` or ``NAME@latest``."""
    name, version = parse_ref(ref, what="dataset version")
    query = select(DatasetVersion).where(DatasetVersion.name == name)
    if version == "latest":
        found = session.exec(query.order_by(col(DatasetVersion.version).desc())).first()
    elif version.isdigit():
        found = session.exec(query.where(DatasetVersion.version == int(version))).first()
    else:
        raise InvalidInput(f"dataset version {ref!r}: VERSION must be a number or 'latest'")
    if found is None:
        known = list_versions(session, name=name)
        hint = f"known versions: {[v.ref for v in known]}" if known else "import it first"
        raise NotFound(f"no dataset version {ref!r} ({hint})")
    return found


def get_by_id(session: Session, *, version_id: int) -> DatasetVersion:
    found = session.get(DatasetVersion, version_id)
    if found is None:
        raise NotFound(f"no dataset version with id {version_id}")
    return found


def list_versions(session: Session, *, name: str | None = None) -> Sequence[DatasetVersion]:
    query = select(DatasetVersion).order_by(col(DatasetVersion.name), col(DatasetVersion.version))
    if name is not None:
        query = query.where(DatasetVersion.name == name)
    return session.exec(query).all()


def to_public(session: Session, version: DatasetVersion) -> DatasetVersionPublic:
    parent = session.get(DatasetVersion, version.parent_id) if version.parent_id else None
    return DatasetVersionPublic.model_validate(
        version, update={"ref": version.ref, "parent": parent.ref if parent else None}
    )


def load_records(session: Session, store: ArtifactStore, *, version: DatasetVersion) -> RecordSet:
    """The version's records, byte-for-byte as imported (digest checked twice)."""
    data = store.get_bytes(version.artifact_digest)
    records = _records.RecordSet.from_npz_bytes(data)
    if records.manifest_digest() != version.digest:
        raise Conflict(
            f"dataset {version.ref}: stored records do not match digest {version.digest}"
        )
    return records


def load_split(
    session: Session, store: ArtifactStore, *, version: DatasetVersion, split: str
) -> RecordSet:
    """One split of a version, recomputed from the stable hash rule."""
    if split not in version.split_fractions:
        raise InvalidInput(
            f"dataset {version.ref} has no split {split!r}; splits: {list(version.split_fractions)}"
        )
    records = load_records(session, store, version=version)
    names = splits.assign_splits(records.ids, fractions=version.split_fractions, salt=version.name)
    return records.subset(names == split)


def import_dataset(
    session: Session,
    store: ArtifactStore,
    *,
    name: str,
    source: str,
    records: RecordSet | None = None,
    append: bool = False,
    fractions: Mapping[str, float] | None = None,
    schema: DatasetSchema | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[DatasetVersion, bool]:
    """Create the next version of ``name`` from ``source`` (or ``records``).

    Returns the version and whether it was created (False: identical content existed).
    ``append`` merges the new records into the latest version's records.
    """
    if not name or "@" in name or "/" in name:
        raise InvalidInput(f"dataset name {name!r} must be non-empty without '@' or '/'")
    parent = _latest(session, name=name)
    if records is None:
        layout = schema or (DatasetSchema.model_validate(parent.data_schema) if parent else None)
        records = sources.load_source(source, schema=layout, target=parent.ref if parent else name)
    parent_records = load_records(session, store, version=parent) if parent else None
    new = adopt_label_names(records, parent_records)
    merged = new
    if append and parent_records is not None and parent is not None:
        try:
            merged = parent_records.merge(new)
        except ValueError as exc:
            raise InvalidInput(
                f"cannot append to {parent.ref}: {exc}. Give the new file the same feature "
                "names, label names and shape (an .npz may carry 'feature_names' and "
                "'label_names' arrays)"
            ) from exc

    digest = merged.manifest_digest()
    existing = session.exec(
        select(DatasetVersion).where(DatasetVersion.name == name, DatasetVersion.digest == digest)
    ).first()
    if existing is not None:
        return existing, False

    use_schema = schema or (
        DatasetSchema.model_validate(parent.data_schema)
        if parent
        else validation.infer_schema(merged)
    )
    use_fractions = dict(
        fractions or (parent.split_fractions if parent else splits.DEFAULT_FRACTIONS)
    )
    try:
        use_fractions = splits.check_fractions(use_fractions)
    except ValueError as exc:  # a caller's mistake: a clear 422, never a server error
        raise InvalidInput(str(exc)) from exc
    report = validation.validate_records(
        merged, schema=use_schema, reference=parent_records, alpha=alpha
    )
    report.reference_version = parent.ref if parent else None
    blob = merged.to_npz_bytes()
    ref = store.put_bytes(blob)
    lineage: dict[str, object] = {
        "source": source,
        "mode": "append" if append and parent else "snapshot",
        "parent": parent.ref if parent else None,
        "artifact": sha256_digest(blob),
    }
    if parent_records is not None:
        lineage["diff"] = merged.diff(parent_records).model_dump()
    version = DatasetVersion(
        name=name,
        version=(parent.version + 1) if parent else 1,
        digest=digest,
        source=source,
        num_records=len(merged),
        feature_shape=list(merged.feature_shape),
        labelled=merged.labels is not None,
        split_fractions=use_fractions,
        splits=splits.split_counts(merged.ids, fractions=use_fractions, salt=name),
        validation_status="passed" if report.passed else "failed",
        validation=report.model_dump(mode="json"),
        lineage=lineage,
        data_schema=use_schema.model_dump(mode="json"),
        artifact_digest=ref.digest,
        artifact_size=ref.size,
        parent_id=parent.id if parent else None,
    )
    session.add(version)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            f"dataset {name}: another import created version {version.version} at the same "
            "time; run the import again"
        ) from exc
    return version, True


def validate_against_latest(
    session: Session,
    store: ArtifactStore,
    *,
    name: str,
    records: RecordSet,
    alpha: float = DEFAULT_ALPHA,
) -> ValidationReport:
    """Dry run: how would ``records`` fare as the next version of ``name``? Stores nothing."""
    parent = _latest(session, name=name)
    parent_records = load_records(session, store, version=parent) if parent else None
    records = adopt_label_names(records, parent_records)
    schema = (
        DatasetSchema.model_validate(parent.data_schema)
        if parent
        else validation.infer_schema(records)
    )
    report = validation.validate_records(
        records, schema=schema, reference=parent_records, alpha=alpha
    )
    report.reference_version = parent.ref if parent else None
    return report


def next_layout(session: Session, *, name: str) -> tuple[DatasetSchema | None, str]:
    """The schema a file imported as the next version of ``name`` is laid out by (None for a
    new dataset) and the version it comes from (``digits@1``; ``name`` when there is none):
    for :func:`~hub.datasets.sources.load_source`."""
    parent = _latest(session, name=name)
    if parent is None:
        return None, name
    return DatasetSchema.model_validate(parent.data_schema), parent.ref


def adopt_label_names(records: RecordSet, parent: RecordSet | None) -> RecordSet:
    """``records`` with the parent version's label names, when its labels can be read so.

    A CSV or ``.npz`` without label names has class indices (``0``..``9``): they take the
    parent's names. Labels given by name (``"cat"``) become the parent's indices for those
    names. Anything else is left as it is (the merge or the validation reports it)."""
    if parent is None or parent.label_names is None or records.labels is None:
        return records
    names = parent.label_names
    if records.label_names == names:
        return records
    if records.label_names is None:
        if records.labels.size and int(records.labels.max()) >= len(names):
            return records
        return replace(records, label_names=names)
    lookup = {label: i for i, label in enumerate(names)}
    if not set(records.label_names) <= lookup.keys():
        return records
    remap = np.array([lookup[label] for label in records.label_names], dtype=np.int64)
    return replace(records, labels=remap[records.labels], label_names=names)


def override_validation(session: Session, *, ref: str, reason: str) -> DatasetVersion:
    """Let a version that failed validation be used for training; the reason is recorded."""
    if not reason.strip():
        raise InvalidInput(
            "an override needs a reason (--reason '...'); it is kept with the version"
        )
    version = get_version(session, ref=ref)
    if version.validation_status == "passed":
        raise Conflict(f"dataset {version.ref} passed validation; there is nothing to override")
    version.validation_status = "overridden"
    version.override_reason = reason.strip()
    session.add(version)
    session.flush()
    return version


def require_trainable(version: DatasetVersion) -> None:
    """Raise unless the version passed validation or a person overrode it explicitly."""
    if version.validation_status in {"passed", "overridden"}:
        return
    report = ValidationReport.model_validate(version.validation)
    raise DatasetInvalid(
        f"dataset {version.ref} failed validation and cannot be used for training. Fix the data, "
        f"or override explicitly: edgeloop dataset override {version.ref} --reason '...'\n"
        + report.render_text(),
        details={"failures": [c.name for c in report.failures()]},
    )


def _latest(session: Session, *, name: str) -> DatasetVersion | None:
    return session.exec(
        select(DatasetVersion)
        .where(DatasetVersion.name == name)
        .order_by(col(DatasetVersion.version).desc())
    ).first()
