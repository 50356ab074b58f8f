"""Dataset versions: import (built-in source or upload), show, export, validate, override."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from hub import registry
from hub.api.deps import ContextDep, SessionDep, StoreDep
from hub.datasets import service
from hub.datasets.sources import SourceError, load_source
from hub.errors import InvalidInput
from hub.tables import DatasetVersionPublic, ModelVersionPublic

router = APIRouter(prefix="/datasets", tags=["datasets"])


class DatasetImport(BaseModel):
    source: str = Field(description="a built-in source such as sklearn:digits")
    append: bool = Field(default=False, description="merge into the latest version's records")
    fractions: dict[str, float] | None = Field(default=None, description="split -> fraction")
    alpha: float = Field(default=service.DEFAULT_ALPHA, gt=0, lt=1)


class ImportResult(DatasetVersionPublic):
    created: bool


class Override(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


def _load(source: str) -> Any:
    try:
        return load_source(source)
    except SourceError as exc:
        raise InvalidInput(str(exc)) from exc


async def _load_upload(upload: UploadFile, *, limit: int) -> Any:
    suffix = Path(upload.filename or "upload.csv").suffix.lower()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        size = 0
        with path.open("wb") as fh:
            while block := await upload.read(1024 * 1024):
                size += len(block)
                if size > limit:
                    raise InvalidInput(f"upload is larger than the limit of {limit} bytes")
                fh.write(block)
        return _load(str(path))


@router.get("", response_model=list[DatasetVersionPublic])
def list_datasets(session: SessionDep, name: str | None = None) -> list[DatasetVersionPublic]:
    return [service.to_public(session, v) for v in service.list_versions(session, name=name)]


@router.post("/{name}/versions", response_model=ImportResult, status_code=201)
def import_builtin(
    name: str, body: DatasetImport, session: SessionDep, store: StoreDep
) -> ImportResult:
    if ":" not in body.source:
        raise InvalidInput(
            f"source {body.source!r}: the API imports built-in sources (e.g. sklearn:digits); "
            "upload files to /datasets/{name}/versions/upload"
        )
    version, created = service.import_dataset(
        session,
        store,
        name=name,
        source=body.source,
        records=_load(body.source),
        append=body.append,
        fractions=body.fractions,
        alpha=body.alpha,
    )
    public = service.to_public(session, version)
    return ImportResult(**public.model_dump(), created=created)


@router.post("/{name}/versions/upload", response_model=ImportResult, status_code=201)
async def import_upload(
    name: str,
    session: SessionDep,
    store: StoreDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description=".csv, .parquet or .npz")],
    append: Annotated[bool, Form()] = False,
    alpha: Annotated[float, Form(gt=0, lt=1)] = service.DEFAULT_ALPHA,
) -> ImportResult:
    records = await _load_upload(file, limit=ctx.settings.max_upload_bytes)
    version, created = service.import_dataset(
        session,
        store,
        name=name,
        source=f"upload:{file.filename}",
        records=records,
        append=append,
        alpha=alpha,
    )
    public = service.to_public(session, version)
    return ImportResult(**public.model_dump(), created=created)


@router.post("/{name}/validate")
async def validate_upload(
    name: str,
    session: SessionDep,
    store: StoreDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description=".csv, .parquet or .npz")],
    alpha: Annotated[float, Form(gt=0, lt=1)] = service.DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Dry run: validate a file as if it were the next version of ``name``; stores nothing."""
    records = await _load_upload(file, limit=ctx.settings.max_upload_bytes)
    report = service.validate_against_latest(
        session, store, name=name, records=records, alpha=alpha
    )
    return {**report.model_dump(mode="json"), "text": report.render_text()}


@router.get("/{name}/versions/{version}", response_model=DatasetVersionPublic)
def show(name: str, version: str, session: SessionDep) -> DatasetVersionPublic:
    return service.to_public(session, service.get_version(session, ref=f"{name}@{version}"))


@router.get(
    "/{name}/versions/{version}/data",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def export(name: str, version: str, session: SessionDep, store: StoreDep) -> Response:
    """The version's records (.npz) byte-for-byte as stored."""
    found = service.get_version(session, ref=f"{name}@{version}")
    data = store.get_bytes(found.artifact_digest)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "X-Edgeloop-Digest": found.artifact_digest,
            "Content-Disposition": f'attachment; filename="{found.name}-{found.version}.npz"',
        },
    )


@router.post("/{name}/versions/{version}/override", response_model=DatasetVersionPublic)
def override(name: str, version: str, body: Override, session: SessionDep) -> DatasetVersionPublic:
    found = service.override_validation(session, ref=f"{name}@{version}", reason=body.reason)
    return service.to_public(session, found)


@router.get("/{name}/versions/{version}/models", response_model=list[ModelVersionPublic])
def models_trained_on(name: str, version: str, session: SessionDep) -> list[ModelVersionPublic]:
    """Reverse lineage: model versions trained on this dataset version."""
    found = registry.versions_from_dataset(session, dataset=f"{name}@{version}")
    return [registry.to_public(session, v) for v in found]
