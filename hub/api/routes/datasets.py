"""Dataset versions: import (built-in source or upload), show, export, validate, override."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StringConstraints
from sqlmodel import Session

from hub import datasets
from hub.api.deps import NAME_PATTERN, ContextDep, NamePath, SessionDep, StoreDep, VersionPath
from hub.api.public import DatasetImportPublic, ValidationReportPublic
from hub.core.errors import InvalidInput
from hub.datasets import service
from hub.registry import models as registry
from hub.tables import DatasetVersionPublic, ModelVersionPublic

if TYPE_CHECKING:
    from hub.datasets import RecordSet

# hub.datasets' record code (numpy, the sources) loads on first use: `dataset list` needs none
router = APIRouter(prefix="/datasets", tags=["datasets"])

Fraction = Annotated[float, Field(gt=0, le=1)]


def _builtin_enum(schema: dict[str, Any]) -> None:
    # read when the document is built: plugins registered
    schema["enum"] = datasets.known_sources()


class DatasetImport(BaseModel):
    source: str = Field(
        description="a built-in source such as sklearn:digits; files are uploaded instead "
        "(POST /datasets/{name}/versions/upload): the API never reads the hub's disk",
        json_schema_extra=_builtin_enum,
    )
    append: StrictBool = Field(default=False, description="merge into the latest version's records")
    fractions: dict[Annotated[str, StringConstraints(pattern=r"\S")], Fraction] | None = Field(
        default=None, min_length=1, description="split -> fraction (they must sum to 1)"
    )
    alpha: StrictFloat = Field(default=service.DEFAULT_ALPHA, gt=0, lt=1)


class Override(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


def _builtin(source: str) -> Any:
    try:
        return datasets.load_builtin(source)
    except datasets.SourceError as exc:
        raise InvalidInput(str(exc)) from exc


async def _load_upload(upload: UploadFile, *, limit: int, session: Session, name: str) -> RecordSet:
    """The uploaded file's records, laid out like the latest version of ``name`` (a flat CSV
    for a dataset of 8x8 images: :func:`~hub.datasets.sources.fit_layout`)."""
    schema, target = service.next_layout(session, name=name)
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
        try:
            return datasets.load_source(str(path), schema=schema, target=target)
        except datasets.SourceError as exc:
            raise InvalidInput(str(exc).replace(str(path), upload.filename or "upload")) from exc


@router.get("", response_model=list[DatasetVersionPublic])
def list_datasets(
    session: SessionDep,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
) -> list[DatasetVersionPublic]:
    return [service.to_public(session, v) for v in service.list_versions(session, name=name)]


@router.post("/{name}/versions", response_model=DatasetImportPublic, status_code=201)
def import_builtin(
    name: NamePath, body: DatasetImport, session: SessionDep, store: StoreDep
) -> DatasetImportPublic:
    """Import a built-in (registered) source. Anything else (``file:``, a path) is refused
    with one message that does not depend on what exists on the hub."""
    records = _builtin(body.source)
    version, created = service.import_dataset(
        session,
        store,
        name=name,
        source=body.source,
        records=records,
        append=body.append,
        fractions=body.fractions,
        alpha=body.alpha,
    )
    public = service.to_public(session, version)
    return DatasetImportPublic(**public.model_dump(), created=created)


@router.post("/{name}/versions/upload", response_model=DatasetImportPublic, status_code=201)
async def import_upload(
    name: NamePath,
    session: SessionDep,
    store: StoreDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description=".csv, .parquet or .npz")],
    append: Annotated[bool, Form()] = False,
    alpha: Annotated[float, Form(gt=0, lt=1)] = service.DEFAULT_ALPHA,
) -> DatasetImportPublic:
    records = await _load_upload(
        file, limit=ctx.settings.max_upload_bytes, session=session, name=name
    )
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
    return DatasetImportPublic(**public.model_dump(), created=created)


@router.post("/{name}/validate", response_model=ValidationReportPublic)
async def validate_upload(
    name: NamePath,
    session: SessionDep,
    store: StoreDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description=".csv, .parquet or .npz")],
    alpha: Annotated[float, Form(gt=0, lt=1)] = service.DEFAULT_ALPHA,
) -> ValidationReportPublic:
    """Dry run: validate a file as if it were the next version of ``name``; stores nothing."""
    records = await _load_upload(
        file, limit=ctx.settings.max_upload_bytes, session=session, name=name
    )
    report = service.validate_against_latest(
        session, store, name=name, records=records, alpha=alpha
    )
    return ValidationReportPublic(**report.model_dump(), text=report.render_text())


@router.get("/{name}/versions/{version}", response_model=DatasetVersionPublic)
def show(name: NamePath, version: VersionPath, session: SessionDep) -> DatasetVersionPublic:
    return service.to_public(session, service.get_version(session, ref=f"{name}@{version}"))


@router.get(
    "/{name}/versions/{version}/data",
    response_class=Response,
    responses={
        200: {
            "description": "npz and parquet as application/octet-stream, csv as text/csv",
            "content": {"application/octet-stream": {}, "text/csv": {}},
        }
    },
    response_model=None,
)
def export(
    name: NamePath,
    version: VersionPath,
    session: SessionDep,
    store: StoreDep,
    format: Annotated[
        Literal["npz", "csv", "parquet"],
        Query(
            description="npz: byte-for-byte as stored; csv/parquet: a table (id, one column "
            "per flattened feature, e.g. px_0_0..px_7_7, label) that imports back to the "
            "same records"
        ),
    ] = "npz",
) -> Response:
    """The version's records: the stored .npz byte-for-byte, or as a CSV / Parquet table."""
    found = service.get_version(session, ref=f"{name}@{version}")
    if format == "npz":
        data = store.get_bytes(found.artifact_digest)
    else:
        frame = datasets.records_to_frame(service.load_records(session, store, version=found))
        data = (
            frame.to_csv(index=False).encode("utf-8")
            if format == "csv"
            else frame.to_parquet(index=False)
        )
    return Response(
        data,
        media_type="text/csv" if format == "csv" else "application/octet-stream",
        headers={
            "X-Edgeloop-Digest": found.artifact_digest,
            "Content-Disposition": f'attachment; filename="{found.name}-{found.version}.{format}"',
        },
    )


@router.post("/{name}/versions/{version}/override", response_model=DatasetVersionPublic)
def override(
    name: NamePath, version: VersionPath, body: Override, session: SessionDep
) -> DatasetVersionPublic:
    found = service.override_validation(session, ref=f"{name}@{version}", reason=body.reason)
    return service.to_public(session, found)


@router.get("/{name}/versions/{version}/models", response_model=list[ModelVersionPublic])
def models_trained_on(
    name: NamePath, version: VersionPath, session: SessionDep
) -> list[ModelVersionPublic]:
    """Reverse lineage: model versions trained on this dataset version."""
    found = registry.versions_from_dataset(session, dataset=f"{name}@{version}")
    return [registry.to_public(session, v) for v in found]
