"""SQLModel tables and their API families (Base / Create / Public / table), and the schema's
``create_all`` / ``drop_all`` (importing this package registers every table)."""

import contextlib
import json
import logging
from enum import Enum
from typing import Any

import sqlalchemy as sa
from pydantic_core import PydanticUndefined
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from hub.tables.cluster import ClusterLease, ClusterReplica
from hub.tables.columns import JsonInt
from hub.tables.datasets import DatasetVersion, DatasetVersionBase, DatasetVersionPublic
from hub.tables.devices import Device, DeviceCreate, DevicePublic, DeviceUpdate
from hub.tables.fleet import (
    DeploymentEventRow,
    FeedbackLabelRow,
    FieldSample,
    IngestSeq,
    TelemetryWindowRow,
)
from hub.tables.monitoring import (
    Alert,
    AlertKind,
    AlertPublic,
    MonitorCursor,
    MonitorDevice,
    MonitorScore,
)
from hub.tables.quality import LabelQuarantine, LabelQuarantinePublic
from hub.tables.registry import (
    AliasMove,
    Bundle,
    BundlePublic,
    MetricIn,
    ModelAlias,
    ModelVersion,
    ModelVersionPublic,
    RegisteredModel,
    RunArtifact,
    RunCreate,
    RunMetric,
    RunPublic,
    TrainingRun,
)
from hub.tables.rollouts import Rollout, RolloutDevice, RolloutEvent, RolloutShadow
from hub.tables.rollups import LabelRollup, MonitorScoreRollup, TelemetryRollup
from hub.tables.schema import SchemaStamp, schema_fingerprint, store_fingerprint, stored_fingerprint
from hub.tables.security import (
    ApiToken,
    ApiTokenCreate,
    ApiTokenPublic,
    DeviceCertificate,
    DeviceCredential,
    EnrollmentToken,
    EnrollmentTokenCreate,
    EnrollmentTokenPublic,
    TokenScope,
)
from hub.tables.triggers import TrainingPolicy, TriggerEvent, TriggerKind, TriggerStatus

__all__ = [
    "Alert",
    "AlertKind",
    "AlertPublic",
    "AliasMove",
    "ApiToken",
    "ApiTokenCreate",
    "ApiTokenPublic",
    "Bundle",
    "BundlePublic",
    "ClusterLease",
    "ClusterReplica",
    "DatasetVersion",
    "DatasetVersionBase",
    "DatasetVersionPublic",
    "DeploymentEventRow",
    "Device",
    "DeviceCertificate",
    "DeviceCreate",
    "DeviceCredential",
    "DevicePublic",
    "DeviceUpdate",
    "EnrollmentToken",
    "EnrollmentTokenCreate",
    "EnrollmentTokenPublic",
    "FeedbackLabelRow",
    "FieldSample",
    "IngestSeq",
    "JsonInt",
    "LabelQuarantine",
    "LabelQuarantinePublic",
    "LabelRollup",
    "MetricIn",
    "ModelAlias",
    "ModelVersion",
    "ModelVersionPublic",
    "MonitorCursor",
    "MonitorDevice",
    "MonitorScore",
    "MonitorScoreRollup",
    "RegisteredModel",
    "Rollout",
    "RolloutDevice",
    "RolloutEvent",
    "RolloutShadow",
    "RunArtifact",
    "RunCreate",
    "RunMetric",
    "RunPublic",
    "SchemaStamp",
    "TelemetryRollup",
    "TelemetryWindowRow",
    "TokenScope",
    "TrainingPolicy",
    "TrainingRun",
    "TriggerEvent",
    "TriggerKind",
    "TriggerStatus",
    "add_missing_columns",
    "create_all",
    "drop_all",
    "schema_fingerprint",
]


log = logging.getLogger("edgeloop.schema")


def create_all(engine: Engine) -> bool:
    """Create every table the hub uses that is missing, and add the columns a newer release
    added to existing tables (:func:`add_missing_columns`); nothing is dropped or changed.

    Every start runs this: where the database carries the current schema's fingerprint
    (:func:`schema_fingerprint`, stored by the last full check in ``edgeloop_schema``), one
    query stands for the whole check. Returns whether the full check ran."""
    fingerprint = schema_fingerprint()
    if stored_fingerprint(engine) == fingerprint:
        return False
    SQLModel.metadata.create_all(engine)
    add_missing_columns(engine)
    store_fingerprint(engine, fingerprint)
    return True


def _fill_value(table: str, column: sa.Column[Any]) -> Any:
    """What rows from before a column hold: its model field's default (or default factory),
    else its column default; None: add it nullable."""
    value: Any = None
    model = next(
        (
            m.class_
            for m in SQLModel._sa_registry.mappers
            if getattr(m.local_table, "name", None) == table
        ),
        None,
    )
    field = model.model_fields.get(column.name) if model is not None else None
    if field is not None and field.default_factory is not None:
        value = field.default_factory()
    elif field is not None and field.default not in (None, PydanticUndefined):
        value = field.default
    elif column.default is not None and getattr(column.default, "is_scalar", False):
        value = column.default.arg  # type: ignore[attr-defined]
    if column.nullable and value is None:
        return None
    return value


def _literal(engine: Engine, value: Any, column: sa.Column[Any]) -> str:
    if isinstance(column.type, sa.JSON) or isinstance(value, dict | list):
        value = json.dumps(value)
    elif isinstance(value, Enum):
        value = value.value
    literal = sa.literal(value).compile(
        dialect=engine.dialect, compile_kwargs={"literal_binds": True}
    )
    return str(literal)


def _existing_columns(engine: Engine) -> dict[str, set[str]]:
    """Table name -> its column names, in one query (this runs at every start)."""
    if engine.dialect.name == "sqlite":
        query = (
            "SELECT m.name, p.name FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS p"
            " WHERE m.type = 'table'"
        )
    elif engine.dialect.name == "postgresql":
        query = (
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
        )
    else:  # pragma: no cover - the hub runs on SQLite and PostgreSQL
        inspector = sa.inspect(engine)
        return {
            t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()
        }
    found: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for table, column in conn.execute(sa.text(query)):
            found.setdefault(str(table), set()).add(str(column))
    return found


def add_missing_columns(engine: Engine) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each column of the schema that an existing table
    lacks (a database made by an older hub); returns ``table.column`` of each one added.

    Additive only: a new column is added NOT NULL with its model field's default (a JSON
    column's ``{}`` too), so the rows from before hold that default, or nullable when it has
    none. Renames, type changes and drops are not migrations this does."""
    columns = _existing_columns(engine)
    added: list[str] = []
    statements: list[str] = []
    for table in SQLModel.metadata.sorted_tables:
        have = columns.get(table.name)
        if have is None:
            continue
        for column in table.columns:
            if column.name in have:
                continue
            prepare = engine.dialect.identifier_preparer
            ddl = (
                f"ALTER TABLE {prepare.quote(table.name)} ADD COLUMN "
                f"{prepare.quote(column.name)} {column.type.compile(dialect=engine.dialect)}"
            )
            value = _fill_value(table.name, column)
            if value is not None:
                # no literal for it (a datetime, say): nullable, rows before hold NULL
                with contextlib.suppress(sa.exc.CompileError, NotImplementedError, TypeError):
                    ddl += f" NOT NULL DEFAULT {_literal(engine, value, column)}"
            statements.append(ddl)
            added.append(f"{table.name}.{column.name}")
    if statements:
        with engine.begin() as conn:
            for ddl in statements:
                conn.execute(sa.text(ddl))
        log.warning("schema: added %d column(s) a newer release uses: %s", len(added), added)
    return added


def drop_all(engine: Engine) -> None:
    SQLModel.metadata.drop_all(engine)
