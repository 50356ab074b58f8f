"""RecordSet: content digests, deterministic serialisation, merge/diff/subset, input checks."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.datasets import RecordDiff, RecordSet

NAMES = tuple(f"f_{r}_{c}" for r in range(2) for c in range(3))


def make(
    n: int = 40,
    *,
    seed: int = 0,
    prefix: str = "r",
    labelled: bool = True,
    offset: int = 0,
) -> RecordSet:
    rng = np.random.default_rng(seed)
    return RecordSet(
        ids=np.array([f"{prefix}-{i + offset:04d}" for i in range(n)]),
        features=rng.normal(size=(n, 2, 3)).astype(np.float32),
        labels=rng.integers(0, 3, size=n) if labelled else None,
        feature_names=NAMES,
        label_names=("a", "b", "c") if labelled else None,
    )


def replace(rs: RecordSet, **changes: object) -> RecordSet:
    fields: dict[str, object] = {
        "ids": rs.ids,
        "features": rs.features,
        "labels": rs.labels,
        "feature_names": rs.feature_names,
        "label_names": rs.label_names,
    }
    return RecordSet(**(fields | changes))  # type: ignore[arg-type]


def test_basic_shape_and_readonly() -> None:
    rs = make()
    assert len(rs) == 40 and rs.feature_shape == (2, 3) and rs.num_features == 6
    assert rs.features.dtype == np.float32 and rs.labels is not None
    assert rs.labels.dtype == np.int64
    with pytest.raises(ValueError, match="read-only"):
        rs.features[0, 0, 0] = 1.0
    assert "40 records" in repr(rs)


def test_digest_is_independent_of_record_order() -> None:
    rs = make()
    order = np.random.default_rng(1).permutation(len(rs))
    shuffled = rs.subset(order)
    assert shuffled.manifest_digest() == rs.manifest_digest()
    assert shuffled == rs and hash(shuffled) == hash(rs)
    assert list(shuffled.record_digests()) == list(rs.record_digests()[order])
    assert rs.manifest_digest().startswith("sha256:") and len(rs.manifest_digest()) == 71


@settings(max_examples=60, deadline=None)
@given(record=st.integers(0, 39), byte=st.integers(0, 23), bit=st.integers(0, 7))
def test_digest_changes_when_any_feature_byte_changes(record: int, byte: int, bit: int) -> None:
    rs = make()
    raw = rs.features.astype("<f4").copy()
    raw.view(np.uint8).reshape(len(rs), -1)[record, byte] ^= 1 << bit
    changed = replace(rs, features=raw)
    assert changed.manifest_digest() != rs.manifest_digest()
    differ = np.flatnonzero(changed.record_digests() != rs.record_digests())
    assert differ.tolist() == [record]


def test_digest_changes_with_label_id_names_and_shape() -> None:
    rs = make()
    assert rs.labels is not None
    labels = rs.labels.copy()
    labels[3] = (labels[3] + 1) % 3
    ids = rs.ids.copy()
    ids[5] = "other"
    variants = [
        replace(rs, labels=labels),
        replace(rs, ids=ids),
        replace(rs, feature_names=(*NAMES[:-1], "renamed")),
        replace(rs, label_names=("a", "b", "z")),
        replace(rs, features=rs.features.reshape(40, 6), feature_names=NAMES),
        replace(rs, labels=None, label_names=None),
    ]
    digests = {v.manifest_digest() for v in variants} | {rs.manifest_digest()}
    assert len(digests) == len(variants) + 1


def test_digest_is_pinned_and_byte_order_independent() -> None:
    """The digest format is part of every stored version's identity: it must never drift."""
    rs = RecordSet(
        ids=np.array(["a", "b"]),
        features=np.array([[1.0, 2.0], [3.0, 4.5]], dtype=">f4"),  # big-endian input
        labels=np.array([0, 1], dtype=">i8"),
        feature_names=("x", "y"),
        label_names=("no", "yes"),
    )
    same = RecordSet(
        ids=np.array(["b", "a"]),
        features=np.array([[3, 4.5], [1, 2]], dtype=np.float64),
        labels=np.array([1, 0], dtype=np.int32),
        feature_names=("x", "y"),
        label_names=("no", "yes"),
    )
    assert rs.manifest_digest() == same.manifest_digest() == PINNED_DIGEST
    assert rs.to_npz_bytes() == same.to_npz_bytes()
    # the documented record digest: len(id) as u64 LE, id, features <f4, 0x01, label <i8
    raw = (
        (1).to_bytes(8, "little")
        + b"a"
        + np.array([1.0, 2.0], "<f4").tobytes()
        + b"\x01"
        + np.array([0], "<i8").tobytes()
    )
    assert rs.record_digests()[0] == hashlib.sha256(raw).hexdigest()


PINNED_DIGEST = "sha256:4bc240d2cc9ec252a5e5c269fbf6874d2d321ad182b2c320ba68b4477ca67ef1"


def test_npz_round_trip_is_byte_identical() -> None:
    for rs in (make(), make(labelled=False), make(0)):
        data = rs.to_npz_bytes()
        back = RecordSet.from_npz_bytes(data)
        assert back.to_npz_bytes() == data
        assert back == rs
        assert back.ids.tolist() == sorted(rs.ids.tolist())  # serialised sorted by id
        shuffled = rs.subset(np.random.default_rng(2).permutation(len(rs)))
        assert shuffled.to_npz_bytes() == data
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            assert {"ids", "features", "feature_names"} <= set(npz.files)


def test_from_npz_bytes_rejects_garbage_and_pickles() -> None:
    with pytest.raises(ValueError, match="not a record set"):
        RecordSet.from_npz_bytes(b"not a zip")
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.array(["a"], dtype=object), features=np.zeros((1, 1)))
    with pytest.raises(ValueError):
        RecordSet.from_npz_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass
    with pytest.raises(ValueError, match="missing arrays"):
        RecordSet.from_npz_bytes(buffer.getvalue())


def test_merge_appends_new_records_and_accepts_identical_overlap() -> None:
    base = make(30)
    more = make(30, offset=20)  # ids 20..49; 20..29 overlap with different content
    overlap_same = base.subset(base.ids[20:]).merge(make(10, seed=5, offset=100))
    merged = base.merge(overlap_same)
    assert len(merged) == 40
    assert merged.ids[:30].tolist() == base.ids.tolist()
    assert base.merge(base) is base
    with pytest.raises(ValueError, match=r"r-0020"):
        base.merge(more)


def test_merge_rejects_schema_mismatch() -> None:
    with pytest.raises(ValueError, match=r"different schemas.*label"):
        make().merge(make(labelled=False, prefix="u"))
    renamed = replace(make(prefix="x"), feature_names=tuple(f"g{i}" for i in range(6)))
    with pytest.raises(ValueError, match="feature_names"):
        make().merge(renamed)


def test_diff_counts_and_samples() -> None:
    parent = make(30)
    assert parent.labels is not None
    labels = parent.labels.copy()
    labels[[2, 4]] = (labels[[2, 4]] + 1) % 3
    edited = replace(parent, labels=labels)
    child = edited.subset(edited.ids[2:]).merge(make(7, seed=9, prefix="new"))
    diff = child.diff(parent)
    assert isinstance(diff, RecordDiff)
    assert (diff.added, diff.removed, diff.changed, diff.unchanged) == (7, 2, 2, 26)
    assert diff.removed_sample == ["r-0000", "r-0001"]
    assert diff.changed_sample == ["r-0002", "r-0004"]
    assert diff.added_sample == [f"new-{i:04d}" for i in range(5)]
    assert not diff.schema_changed and not diff.is_empty
    assert parent.diff(parent).is_empty
    assert diff.model_dump()["added"] == 7


def test_subset_by_mask_ids_and_positions() -> None:
    rs = make(10)
    mask = np.zeros(10, dtype=bool)
    mask[[1, 3]] = True
    assert rs.subset(mask).ids.tolist() == ["r-0001", "r-0003"]
    assert rs.subset(["r-0004", "r-0000"]).ids.tolist() == ["r-0004", "r-0000"]
    assert rs.subset(np.array([9, 0])).ids.tolist() == ["r-0009", "r-0000"]
    assert len(rs.subset([])) == 0
    with pytest.raises(ValueError, match="not in this record set"):
        rs.subset(["nope"])
    with pytest.raises(ValueError, match="mask must have shape"):
        rs.subset(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="row positions"):
        rs.subset(np.array([10]))


def features(n: int = 2) -> npt.NDArray[np.float32]:
    return np.zeros((n, 2), dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ids": np.array(["a", "a"])}, "unique; repeated: \\['a'\\]"),
        ({"ids": np.array(["a", ""])}, "non-empty"),
        ({"ids": np.array([1, 2])}, "1-D array of strings"),
        ({"ids": np.array(["a"])}, "2 rows but there are 1 ids"),
        ({"features": np.zeros(2)}, "shape \\(N, \\*feature_shape\\)"),
        ({"features": np.array([["a", "b"], ["c", "d"]])}, "must be numeric"),
        ({"feature_names": ("x",)}, "one feature name per flattened feature"),
        ({"feature_names": ("x", "x")}, "feature_names must be unique"),
        ({"feature_names": ("x", "")}, "non-empty strings"),
        ({"labels": np.array([0.0, 1.0])}, "integer class labels"),
        ({"labels": np.array([0, 1, 2])}, "labels must have shape"),
        ({"labels": np.array([0, -1])}, "non-negative"),
        ({"label_names": ("n",)}, "label_names given but labels is None"),
        ({"labels": np.array([0, 2]), "label_names": ("n", "y")}, "label 2 has no name"),
    ],
)
def test_bad_inputs_give_clear_errors(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "ids": np.array(["a", "b"]),
        "features": features(),
        "feature_names": ("x", "y"),
    }
    with pytest.raises(ValueError, match=message):
        RecordSet(**(base | kwargs))  # type: ignore[arg-type]


def test_object_array_of_strings_is_accepted() -> None:
    rs = RecordSet(
        ids=np.array(["a", "b"], dtype=object), features=features(), feature_names=("x", "y")
    )
    assert rs.ids.dtype.kind == "U"


def test_not_in_marks_new_and_changed_records() -> None:
    parent = make(10)
    assert parent.labels is not None
    labels = parent.labels.copy()
    labels[0] = (labels[0] + 1) % 3
    child = replace(parent, labels=labels).merge(make(3, prefix="n"))
    assert child.not_in(parent).tolist() == [True] + [False] * 9 + [True] * 3
