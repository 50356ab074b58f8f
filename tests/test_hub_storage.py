"""Datasets, tracking and registry against a real database: each test runs on SQLite and
PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from hub.core.artifacts import ArtifactCorrupt, FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.errors import Conflict, DatasetInvalid, InvalidInput, NotFound
from hub.datasets import service
from hub.datasets.records import RecordSet
from hub.datasets.sources import load_source
from hub.registry import models as registry
from hub.registry import tracking
from hub.tables import create_all


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> FileArtifactStore:
    return FileArtifactStore(root=tmp_path / "artifacts")


@pytest.fixture(scope="module")
def digits() -> RecordSet:
    return load_source("sklearn:digits")


def _mask(records: RecordSet, n: int) -> np.ndarray:
    """A random (seeded) choice of n records: sklearn's digits are ordered by writer, so the
    first rows are not a sample of the same distribution as the last ones."""
    mask = np.zeros(len(records), dtype=bool)
    mask[np.random.default_rng(7).permutation(len(records))[:n]] = True
    return mask


def _first(records: RecordSet, n: int) -> RecordSet:
    return records.subset(_mask(records, n))


def _rest(records: RecordSet, n: int) -> RecordSet:
    return records.subset(~_mask(records, n))


def test_import_is_content_addressed_and_idempotent(
    engine: Engine, store: FileArtifactStore, digits: RecordSet
) -> None:
    with session_scope(engine) as s:
        v1, created = service.import_dataset(s, store, name="digits", source="sklearn:digits")
        assert created and v1.version == 1 and v1.num_records == len(digits) == 1797
        assert v1.digest == digits.manifest_digest()
        assert sum(v1.splits.values()) == 1797 and set(v1.splits) == {"train", "val", "test"}
        assert v1.validation_status == "passed"
    with session_scope(engine) as s:
        again, created = service.import_dataset(s, store, name="digits", source="sklearn:digits")
        assert not created and again.id == v1.id
        assert [v.ref for v in service.list_versions(s, name="digits")] == ["digits@1"]


def test_refetch_is_byte_for_byte_and_tampering_is_caught(
    engine: Engine, store: FileArtifactStore, digits: RecordSet
) -> None:
    with session_scope(engine) as s:
        version, _ = service.import_dataset(s, store, name="d", source="x", records=digits)
        blob = store.get_bytes(version.artifact_digest)
        assert blob == digits.to_npz_bytes()
        assert service.load_records(s, store, version=version) == digits
        path = Path(store.stat(version.artifact_digest).uri.removeprefix("file://"))
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with session_scope(engine) as s, pytest.raises(ArtifactCorrupt):
        service.load_records(s, store, version=service.get_version(s, ref="d@1"))


def test_splits_are_stable_when_the_pool_grows(
    engine: Engine, store: FileArtifactStore, digits: RecordSet
) -> None:
    with session_scope(engine) as s:
        v1, _ = service.import_dataset(s, store, name="g", source="a", records=_first(digits, 900))
        v2, _ = service.import_dataset(
            s, store, name="g", source="b", records=_rest(digits, 900), append=True
        )
        assert v2.num_records == len(digits) and v2.parent_id == v1.id
        assert v2.lineage["diff"]["added"] == len(digits) - 900
        assert v2.lineage["diff"]["removed"] == 0
        old_ids = set(_first(digits, 900).ids.tolist())
        for split in ("train", "val", "test"):
            before = set(service.load_split(s, store, version=v1, split=split).ids.tolist())
            after = set(service.load_split(s, store, version=v2, split=split).ids.tolist())
            assert after & old_ids == before, f"{split} membership changed for old records"
        assert sum(v2.splits.values()) == len(digits)


def test_failed_validation_blocks_training_until_overridden(
    engine: Engine, store: FileArtifactStore, digits: RecordSet
) -> None:
    rng = np.random.default_rng(0)
    shifted = RecordSet(
        ids=np.array([f"field-{i}" for i in range(600)]),
        features=np.clip(digits.features[:600] + rng.normal(4, 2, (600, 8, 8)), 0, 16).astype(
            np.float32
        ),
        labels=digits.labels[:600] if digits.labels is not None else None,
        feature_names=digits.feature_names,
        label_names=digits.label_names,
    )
    with session_scope(engine) as s:
        service.import_dataset(s, store, name="digits", source="sklearn:digits", records=digits)
        bad, _ = service.import_dataset(
            s, store, name="digits", source="field", records=shifted, append=True
        )
        assert bad.validation_status == "failed"
        assert bad.validation["passed"] is False
        tracking.create_run(s, spec="digits-cnn", dataset="digits@1", code_version="c1")
        with pytest.raises(DatasetInvalid, match="override"):
            tracking.create_run(s, spec="digits-cnn", dataset="digits@2", code_version="c1")
        with pytest.raises(InvalidInput):
            service.override_validation(s, ref="digits@2", reason="  ")
        with pytest.raises(Conflict):
            service.override_validation(s, ref="digits@1", reason="fine")
        service.override_validation(s, ref="digits@2", reason="new sensor calibration")
    with session_scope(engine) as s:
        version = service.get_version(s, ref="digits@latest")
        assert version.validation_status == "overridden"
        assert version.override_reason == "new sensor calibration"
        run = tracking.create_run(s, spec="digits-cnn", dataset="digits@2", code_version="c1")
        assert run.dataset_version_id == version.id


def _trained_version(
    s: Session, store: FileArtifactStore, *, dataset: str, model: str, accuracy: float
) -> int:
    run = tracking.create_run(
        s, spec="digits-mlp", dataset=dataset, code_version="sha256:abc", params={"lr": 0.01}
    )
    for step, loss in enumerate([0.9, 0.5, 0.3]):
        tracking.log_metric(s, run_id=run.id, key="loss", value=loss, step=step)
    tracking.log_artifact(s, store, run_id=run.id, name="model", data=f"w{accuracy}".encode())
    with pytest.raises(Conflict):
        registry.register_version(s, store, model_name=model, run_id=run.id)
    tracking.finish_run(s, run_id=run.id, metrics={"accuracy": accuracy})
    return registry.register_version(s, store, model_name=model, run_id=run.id).version


def test_lineage_from_model_version_back_to_data_and_code(
    engine: Engine, store: FileArtifactStore, digits: RecordSet
) -> None:
    with session_scope(engine) as s:
        service.import_dataset(s, store, name="digits", source="a", records=_first(digits, 1000))
        service.import_dataset(
            s, store, name="digits", source="b", records=_rest(digits, 1000), append=True
        )
        number = _trained_version(s, store, dataset="digits@2", model="mlp", accuracy=0.97)
    with session_scope(engine) as s:
        found = registry.lineage(s, ref=f"mlp@{number}")
        assert found["model_version"]["ref"] == "mlp@1"
        assert found["model_version"]["metrics"] == {"accuracy": 0.97}
        assert found["run"]["spec"] == "digits-mlp" and found["run"]["params"] == {"lr": 0.01}
        assert found["dataset_version"]["ref"] == "digits@2"
        assert found["dataset_ancestry"] == ["digits@1"]
        assert found["code_version"] == "sha256:abc"
        history = tracking.metric_history(s, run_id=found["run"]["id"], key="loss")
        assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
        assert [v.version for v in registry.versions_from_dataset(s, dataset="digits@2")] == [1]
        assert registry.versions_from_dataset(s, dataset="digits@1") == []


def test_alias_moves_and_history(
    engine: Engine, store: FileArtifactStore, digits: RecordSet
) -> None:
    with session_scope(engine) as s:
        service.import_dataset(s, store, name="digits", source="sklearn:digits", records=digits)
        first = _trained_version(s, store, dataset="digits@1", model="cnn", accuracy=0.95)
        second = _trained_version(s, store, dataset="digits@1", model="cnn", accuracy=0.97)
        assert (first, second) == (1, 2)
        registry.set_alias(s, model_name="cnn", alias="production", version=1)
        registry.set_alias(s, model_name="cnn", alias="candidate", version=2)
    with session_scope(engine) as s:
        assert registry.get_version(s, ref="cnn@production").version == 1
        registry.set_alias(s, model_name="cnn", alias="production", version=2)
    with session_scope(engine) as s:
        assert registry.get_version(s, ref="cnn@production").version == 2
        assert registry.aliases_of(s, model_name="cnn") == {"production": 2, "candidate": 2}
        assert registry.to_public(s, registry.get_version(s, ref="cnn@2")).aliases == [
            "candidate",
            "production",
        ]
        registry.delete_alias(s, model_name="cnn", alias="candidate")
        moves = [
            (m.alias, m.from_version, m.to_version)
            for m in registry.alias_history(s, model_name="cnn")
        ]
        assert moves == [
            ("production", None, 1),
            ("candidate", None, 2),
            ("production", 1, 2),
            ("candidate", 2, None),
        ]
        with pytest.raises(NotFound):
            registry.get_version(s, ref="cnn@candidate")
        with pytest.raises(NotFound):
            registry.set_alias(s, model_name="cnn", alias="production", version=9)
        for bad in ("Prod", "latest", "1abc", ""):
            with pytest.raises(InvalidInput):
                registry.set_alias(s, model_name="cnn", alias=bad, version=1)
        assert registry.get_version(s, ref="cnn@latest").version == 2


def test_bundles_are_registered_once_per_version(engine: Engine, store: FileArtifactStore) -> None:
    with session_scope(engine) as s:
        version = registry.register_version(s, store, model_name="m", data=b"weights")
        ref = store.put_bytes(b"bundle-bytes")
        first = registry.register_bundle(
            s,
            model_version=version,
            digest=ref.digest,
            size=ref.size,
            formats=["onnx"],
            manifest={},
        )
        again = registry.register_bundle(
            s,
            model_version=version,
            digest=ref.digest,
            size=ref.size,
            formats=["onnx"],
            manifest={},
        )
        assert first.id == again.id
        other = registry.register_version(s, store, model_name="m", data=b"weights2")
        with pytest.raises(Conflict):
            registry.register_bundle(
                s, model_version=other, digest=ref.digest, size=ref.size, formats=[], manifest={}
            )
        assert registry.lineage(s, ref="m@1")["bundles"][0]["digest"] == ref.digest


def test_json_columns_round_trip_what_orjson_refuses(database_url: str) -> None:
    """JSON columns are read by orjson, falling back to ``json.loads`` for what it refuses
    (NaN/Infinity, ints beyond 64 bits): every value reads back as written. (PostgreSQL's
    json type refuses NaN itself: there only the big int.)"""
    import math

    from sqlmodel import Session

    from hub.core.db import make_engine
    from hub.tables import MonitorCursor, create_all

    engine = make_engine(database_url)
    create_all(engine)
    sqlite = database_url.startswith("sqlite")
    odd: dict[str, float | int] = {"big": 2**70}
    if sqlite:
        odd |= {"nan": math.nan, "inf": math.inf}
    plain = {"windows": 3, "p": 0.25, "ids": [1, 2], "s": "x"}
    with Session(engine) as s:
        s.add(MonitorCursor(stream="t", model="m", version="1", scope="a", pending=odd))
        s.add(MonitorCursor(stream="t", model="m", version="1", scope="b", pending=plain))
        s.commit()
    with Session(engine) as s:
        a = s.get(MonitorCursor, ("t", "m", "1", "a"))
        b = s.get(MonitorCursor, ("t", "m", "1", "b"))
        assert a is not None and b is not None
        assert a.pending["big"] == 2**70
        if sqlite:
            assert math.isnan(a.pending["nan"]) and a.pending["inf"] == math.inf
        assert b.pending == plain
    engine.dispose()


def test_a_database_from_an_older_release_gets_the_new_columns(database_url: str) -> None:
    """``create_all`` adds the columns a newer release added (here: the promotion evidence of
    #21), with their defaults in the rows from before, so an upgraded hub starts on old data."""
    from sqlalchemy import text
    from sqlmodel import select

    from hub.tables import AliasMove, Rollout, add_missing_columns

    engine = make_engine(database_url)
    try:
        create_all(engine)
        with engine.begin() as conn:  # what an older hub's database looked like
            for table, column in [
                ("rollout", "promotion"),
                ("alias_move", "rollout_id"),
                ("alias_move", "verified"),
                ("alias_move", "evidence"),
            ]:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            conn.execute(
                text(
                    "INSERT INTO alias_move (model_name, alias, from_version, to_version, at)"
                    " VALUES ('m', 'production', NULL, 1, CURRENT_TIMESTAMP)"
                )
            )
        assert sorted(add_missing_columns(engine)) == [
            "alias_move.evidence",
            "alias_move.rollout_id",
            "alias_move.verified",
            "rollout.promotion",
        ]
        assert add_missing_columns(engine) == []  # nothing twice
        create_all(engine)  # what every start runs: idempotent
        with Session(engine) as s:
            old = s.exec(select(AliasMove)).one()
            assert (old.rollout_id, old.verified, old.evidence) == ("", None, {})
            assert s.exec(select(Rollout)).all() == []
    finally:
        engine.dispose()


def test_a_start_on_a_current_database_checks_its_schema_with_one_query(
    database_url: str,
) -> None:
    """``create_all`` runs at every start: on a database stamped with the current schema's
    fingerprint it is one query; an older stamp (a column a newer release added is missing)
    or none (a database from before the stamp) runs the whole check and stamps it again."""
    from sqlalchemy import event, text

    from hub.tables import schema_fingerprint

    engine = make_engine(database_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        assert create_all(engine) is True  # a new database: the whole check
        statements.clear()
        assert create_all(engine) is False
        assert statements == ["SELECT fingerprint FROM edgeloop_schema WHERE id = 1"]

        with engine.begin() as conn:  # an older release's database, its own stamp
            conn.execute(text("ALTER TABLE rollout DROP COLUMN promotion"))
            conn.execute(text("UPDATE edgeloop_schema SET fingerprint = 'older'"))
        assert create_all(engine) is True
        with engine.connect() as conn:
            conn.execute(text("SELECT promotion FROM rollout")).all()  # added again
            stamp = conn.execute(text("SELECT fingerprint FROM edgeloop_schema")).all()
        assert stamp == [(schema_fingerprint(),)]

        with engine.begin() as conn:  # from before the stamp
            conn.execute(text("DROP TABLE edgeloop_schema"))
        assert create_all(engine) is True
        assert create_all(engine) is False
    finally:
        engine.dispose()
