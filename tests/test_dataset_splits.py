"""Stable splits: a record's split never changes when the pool grows."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.datasets import (
    DEFAULT_FRACTIONS,
    RecordSet,
    assign_splits,
    check_fractions,
    split_counts,
    split_key,
    split_of,
    split_records,
)

record_ids = st.text(min_size=1, max_size=24).filter(lambda s: "\x00" not in s)
fraction_sets = st.lists(st.integers(1, 20), min_size=1, max_size=5).map(
    lambda ws: {f"s{i}": w / sum(ws) for i, w in enumerate(ws)}
)


def reference_rule(record_id: str, fractions: dict[str, float], salt: str) -> str:
    """The rule as documented, written out independently."""
    key = record_id.split("#")[-1] if "#" in record_id and record_id.split("#")[-1] else record_id
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = 0.0
    for name, fraction in fractions.items():
        total += fraction
        if total > u:
            return name
    return list(fractions)[-1]


@settings(max_examples=100, deadline=None)
@given(
    pool=st.lists(record_ids, max_size=60, unique=True),
    extra=st.lists(record_ids, max_size=60),
    fractions=fraction_sets,
    salt=st.text(max_size=10),
)
def test_old_ids_keep_their_split_when_the_pool_grows(
    pool: list[str], extra: list[str], fractions: dict[str, float], salt: str
) -> None:
    before = assign_splits(pool, fractions=fractions, salt=salt)
    grown = [*extra[: len(extra) // 2], *pool, *extra[len(extra) // 2 :]]
    after = dict(
        zip(grown, assign_splits(grown, fractions=fractions, salt=salt).tolist(), strict=True)
    )
    assert [after[i] for i in pool] == before.tolist()
    shuffled = list(reversed(pool))
    assert assign_splits(shuffled, fractions=fractions, salt=salt).tolist() == before.tolist()[::-1]


@settings(max_examples=50, deadline=None)
@given(record_id=record_ids, fractions=fraction_sets, salt=st.text(max_size=10))
def test_matches_the_documented_rule(
    record_id: str, fractions: dict[str, float], salt: str
) -> None:
    expected = reference_rule(record_id, fractions, salt)
    assert split_of(record_id, fractions=fractions, salt=salt) == expected
    assert assign_splits([record_id], fractions=fractions, salt=salt).tolist() == [expected]


def test_fractions_are_respected_on_20k_ids() -> None:
    n = 20_000
    ids = np.array([f"rec-{i:06d}" for i in range(n)])
    counts = split_counts(ids, fractions=DEFAULT_FRACTIONS, salt="digits")
    assert list(counts) == ["train", "val", "test"] and sum(counts.values()) == n
    for name, p in DEFAULT_FRACTIONS.items():
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[name] - n * p) < 4.5 * sd, (name, counts)
    uneven = {"a": 0.01, "b": 0.98, "c": 0.01}
    counts = split_counts(ids, fractions=uneven, salt="x")
    for name, p in uneven.items():
        assert abs(counts[name] - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), (name, counts)


def test_deterministic_and_salted() -> None:
    ids = [f"id{i}" for i in range(500)]
    a = assign_splits(ids, fractions=DEFAULT_FRACTIONS, salt="s")
    b = assign_splits(np.array(ids), fractions=DEFAULT_FRACTIONS, salt="s")
    assert a.tolist() == b.tolist()
    assert (a == "train").dtype == np.bool_
    other = assign_splits(ids, fractions=DEFAULT_FRACTIONS, salt="t")
    assert (other != a).sum() > 100  # a different salt gives a different partition
    # pinned: this must never change, or every stored dataset's splits would move
    assert a[:8].tolist() == PINNED


PINNED = ["test", "train", "train", "train", "test", "train", "train", "train"]


def test_split_counts_names_empty_splits_and_split_records() -> None:
    counts = split_counts([], fractions=DEFAULT_FRACTIONS, salt="s")
    assert counts == {"train": 0, "val": 0, "test": 0}
    rs = RecordSet(
        ids=np.array([f"r{i}" for i in range(100)]),
        features=np.arange(100, dtype=np.float32).reshape(100, 1),
        feature_names=("x",),
    )
    parts = split_records(rs, fractions=DEFAULT_FRACTIONS, salt="s")
    assert sum(len(p) for p in parts.values()) == 100
    assert set(parts["train"].ids.tolist()).isdisjoint(parts["test"].ids.tolist())
    for name, part in parts.items():
        assert all(split_of(i, fractions=DEFAULT_FRACTIONS, salt="s") == name for i in part.ids)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({}, "non-empty mapping"),
        ({"train": 0.7, "val": 0.2}, "must sum to 1"),
        ({"train": 1.1, "val": -0.1}, "must be positive"),
        ({"train": 1.0, "val": 0.0}, "must be positive"),
        ({"": 1.0}, "non-empty strings"),
        ({"train": float("nan")}, "must be positive"),
        ({"train": "1"}, "must be a number"),
        ({"train": True}, "must be a number"),
        ([("train", 1.0)], "non-empty mapping"),
    ],
)
def test_invalid_fractions_are_rejected(fractions: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign_splits(["a"], fractions=fractions, salt="s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        split_of("a", fractions=fractions, salt="s")  # type: ignore[arg-type]


def test_fractions_within_tolerance_are_accepted() -> None:
    assert check_fractions({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == {
        "a": 1 / 3,
        "b": 1 / 3,
        "c": 1 / 3,
    }
    assert check_fractions({"all": 1}) == {"all": 1.0}
    with pytest.raises(ValueError, match="sum to 1"):
        check_fractions({"a": 0.5, "b": 0.5 + 1e-6})


@settings(max_examples=60, deadline=None)
@given(
    source=record_ids.filter(lambda s: "#" not in s),
    copies=st.lists(record_ids, min_size=1, max_size=8, unique=True),
    fractions=fraction_sets,
    salt=st.text(max_size=10),
)
def test_records_of_one_source_share_its_split(
    source: str, copies: list[str], fractions: dict[str, float], salt: str
) -> None:
    """A field record naming its source after '#' lands where the source itself lands, so a
    source is never in one version's train split and another's test split."""
    ids = [f"field:{c}#{source}" for c in copies]
    assert {split_key(i) for i in ids} == {source}
    own = split_of(source, fractions=fractions, salt=salt)
    assert set(assign_splits(ids, fractions=fractions, salt=salt).tolist()) == {own}


def test_an_id_without_a_source_is_its_own_key() -> None:
    assert split_key("digits-00001") == "digits-00001"
    assert split_key("trailing#") == "trailing#"
    assert split_key("a#b#c") == "c"
