"""Experiment tracking: training runs with params, per-step metrics and artifacts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from hub._lazy import module
from hub.core.artifacts import ArtifactStore
from hub.core.clock import utcnow
from hub.core.errors import Conflict, InvalidInput, NotFound
from hub.tables import RunArtifact, RunMetric, RunPublic, TrainingRun

if TYPE_CHECKING:
    from hub.datasets import service as datasets
else:  # numpy and the record sources: only lineage and run creation read datasets
    datasets = module("hub.datasets.service")

RUN_STATUSES = {"running", "finished", "failed"}
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def create_run(
    session: Session,
    *,
    spec: str,
    dataset: str,
    code_version: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainingRun:
    """Start a run on a dataset version; refuses one that failed validation."""
    version = datasets.get_version(session, ref=dataset)
    datasets.require_trainable(version)
    if version.id is None:  # pragma: no cover - rows from the database always have an id
        raise NotFound(f"dataset {dataset} has no id")
    run = TrainingRun(
        id=uuid.uuid4().hex,
        spec=spec,
        params=dict(params or {}),
        code_version=code_version,
        tags=dict(tags or {}),
        dataset_version_id=version.id,
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, *, run_id: str) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no training run {run_id!r} (list them with: edgeloop run list)")
    return run


def list_runs(
    session: Session, *, spec: str | None = None, dataset_version_id: int | None = None
) -> Sequence[TrainingRun]:
    query = select(TrainingRun).order_by(col(TrainingRun.started_at).desc())
    if spec is not None:
        query = query.where(TrainingRun.spec == spec)
    if dataset_version_id is not None:
        query = query.where(TrainingRun.dataset_version_id == dataset_version_id)
    return session.exec(query).all()


def _running(session: Session, *, run_id: str) -> TrainingRun:
    run = get_run(session, run_id=run_id)
    if run.status != "running":
        raise Conflict(f"run {run_id} is {run.status}; it no longer takes metrics or artifacts")
    return run


def log_metric(session: Session, *, run_id: str, key: str, value: float, step: int = 0) -> None:
    _running(session, run_id=run_id)
    if step < 0:
        raise InvalidInput(f"metric {key!r}: step must be >= 0, got {step}")
    session.add(RunMetric(run_id=run_id, key=key, value=float(value), step=step))
    session.flush()


def log_metrics(session: Session, *, run_id: str, points: Iterable[tuple[str, float, int]]) -> int:
    """Many ``(key, value, step)`` points in one flush (the API takes up to 10,000 a call: one
    at a time that was ~1 ms each on PostgreSQL). Returns how many were logged."""
    _running(session, run_id=run_id)
    rows = []
    for key, value, step in points:
        if step < 0:
            raise InvalidInput(f"metric {key!r}: step must be >= 0, got {step}")
        rows.append(RunMetric(run_id=run_id, key=key, value=float(value), step=step))
    session.add_all(rows)
    session.flush()
    return len(rows)


def metric_history(session: Session, *, run_id: str, key: str | None = None) -> Sequence[RunMetric]:
    get_run(session, run_id=run_id)
    query = select(RunMetric).where(RunMetric.run_id == run_id)
    if key is not None:
        query = query.where(RunMetric.key == key)
    return session.exec(query.order_by(col(RunMetric.key), col(RunMetric.step))).all()


def log_artifact(
    session: Session, store: ArtifactStore, *, run_id: str, name: str, data: bytes
) -> RunArtifact:
    _running(session, run_id=run_id)
    if not ARTIFACT_NAME.match(name):
        raise InvalidInput(f"artifact name {name!r}: letters, digits, '_', '.', '-' only")
    if session.exec(
        select(RunArtifact).where(RunArtifact.run_id == run_id, RunArtifact.name == name)
    ).first():
        raise Conflict(f"run {run_id} already has an artifact named {name!r}")
    ref = store.put_bytes(data)
    artifact = RunArtifact(run_id=run_id, name=name, digest=ref.digest, size=ref.size)
    session.add(artifact)
    session.flush()
    return artifact


def run_artifacts(session: Session, *, run_id: str) -> dict[str, RunArtifact]:
    rows = session.exec(select(RunArtifact).where(RunArtifact.run_id == run_id)).all()
    return {row.name: row for row in rows}


def finish_run(
    session: Session,
    *,
    run_id: str,
    status: str = "finished",
    metrics: Mapping[str, float] | None = None,
    error: str | None = None,
) -> TrainingRun:
    if status not in RUN_STATUSES - {"running"}:
        raise InvalidInput(f"a run finishes as 'finished' or 'failed', not {status!r}")
    run = _running(session, run_id=run_id)
    run.status = status
    run.metrics = {key: float(value) for key, value in (metrics or {}).items()}
    run.error = error
    run.finished_at = utcnow()
    session.add(run)
    session.flush()
    return run


def to_public(session: Session, run: TrainingRun) -> RunPublic:
    dataset = datasets.get_by_id(session, version_id=run.dataset_version_id)
    artifacts = {name: row.digest for name, row in run_artifacts(session, run_id=run.id).items()}
    return RunPublic.model_validate(
        run, update={"dataset_version": dataset.ref, "artifacts": artifacts}
    )
