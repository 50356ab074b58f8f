"""load_source: built-ins, files by suffix, content-derived ids, helpful errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hub.datasets import (
    BUILTIN_SOURCES,
    RecordSet,
    SourceError,
    known_sources,
    load_source,
    make_vibration,
)


def table(n: int = 12, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"row{i}" for i in range(n)],
            "temp": rng.normal(20, 3, n).round(2),
            "rpm": rng.integers(900, 1500, n),
            "label": rng.integers(0, 3, n),
        }
    )


def test_sklearn_digits() -> None:
    rs = load_source("sklearn:digits")
    assert rs.features.shape == (1797, 8, 8) and rs.features.dtype == np.float32
    assert rs.features.min() == 0 and rs.features.max() == 16
    assert rs.labels is not None and sorted(np.unique(rs.labels).tolist()) == list(range(10))
    assert rs.ids[0] == "digits-00000" and rs.ids[-1] == "digits-01796"
    assert rs.label_names == tuple("0123456789")
    assert rs.feature_names[:3] == ("px_0_0", "px_0_1", "px_0_2") and rs.feature_names[-1] == (
        "px_7_7"
    )
    assert load_source("sklearn:digits").manifest_digest() == rs.manifest_digest()


def test_other_sklearn_tables() -> None:
    iris = load_source("sklearn:iris")
    assert iris.features.shape == (150, 4) and iris.label_names == (
        "setosa",
        "versicolor",
        "virginica",
    )
    assert iris.feature_names[0] == "sepal_length_cm"


def test_synthetic_vibration_is_deterministic_and_unlabelled() -> None:
    rs = load_source("synthetic:vibration")
    assert rs.features.shape == (2000, 3, 64) and rs.labels is None
    assert rs.ids[0] == "vib-00000" and rs.feature_names[0] == "ax_t00"
    assert np.isfinite(rs.features).all()
    assert load_source("synthetic:vibration") == rs
    other = make_vibration(n_windows=10, seed=1)
    assert other.features.shape == (10, 3, 64) and other != rs.subset(rs.ids[:10])
    faulty = load_source("synthetic:vibration-faulty")
    assert len(faulty) == 200 and faulty.ids[0] == "vibfault-00000"

    # faulty windows carry more high-frequency energy than healthy ones
    def hf(x: RecordSet) -> float:
        return float(np.abs(np.diff(x.features, axis=2)).mean())

    assert hf(faulty) > 1.5 * hf(rs)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trip(tmp_path: Path, suffix: str) -> None:
    frame = table()
    path = tmp_path / f"data{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    rs = load_source(str(path))
    assert rs.ids.tolist() == frame["id"].tolist()
    assert rs.feature_names == ("temp", "rpm")
    assert rs.labels is not None and rs.labels.tolist() == frame["label"].tolist()
    assert rs.label_names is None
    np.testing.assert_allclose(rs.features, frame[["temp", "rpm"]].to_numpy(np.float32))
    unlabelled = load_source(str(path), label_column=None)
    assert unlabelled.labels is None and unlabelled.feature_names == ("temp", "rpm", "label")


def test_csv_string_labels_and_numeric_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("key,a,b,state\n007,1,2,normal\n8,3,4,fault\n9,5,6,normal\n")
    rs = load_source(str(path), id_column="key", label_column="state")
    assert rs.ids.tolist() == ["7", "8", "9"]
    assert rs.label_names == ("fault", "normal")
    assert rs.labels is not None and rs.labels.tolist() == [1, 0, 1]


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 4, 5)).astype(np.float64)
    y = rng.integers(0, 4, 20)
    path = tmp_path / "plain.npz"
    np.savez(path, X=x, y=y, ids=np.array([f"s{i}" for i in range(20)]))
    rs = load_source(str(path))
    assert rs.features.shape == (20, 4, 5) and rs.features.dtype == np.float32
    np.testing.assert_array_equal(rs.features, x.astype(np.float32))
    assert rs.labels is not None and rs.labels.tolist() == y.tolist()
    assert rs.ids[3] == "s3" and rs.feature_names[0] == "f_0_0"
    # a record set's own blob is a valid source, and loads back equal
    digits = load_source("sklearn:digits").subset(np.arange(50))
    blob = tmp_path / "digits.npz"
    blob.write_bytes(digits.to_npz_bytes())
    again = load_source(str(blob))
    assert again == digits and again.to_npz_bytes() == digits.to_npz_bytes()
    no_ids = load_source(str(path), id_column=None)
    assert no_ids.ids[0] != "s0" and len(no_ids.ids[0]) == 16


def test_content_ids_are_stable_when_a_csv_grows(tmp_path: Path) -> None:
    frame = table(30).drop(columns="id")
    frame = pd.concat([frame, frame.iloc[[4, 4]]], ignore_index=True)  # exact duplicate rows
    path = tmp_path / "grow.csv"
    frame.to_csv(path, index=False)
    first = load_source(str(path))
    assert len(set(first.ids.tolist())) == 32
    base = str(first.ids[4])
    assert len(base) == 16 and {f"{base}-1", f"{base}-2"} <= set(first.ids.tolist())

    grown = pd.concat([frame, table(10, seed=9).drop(columns="id"), frame.iloc[[4]]])
    grown.to_csv(path, index=False)
    second = load_source(str(path))
    diff = second.diff(first)
    assert (diff.added, diff.removed, diff.changed) == (11, 0, 0)
    assert f"{base}-3" in second.ids.tolist()
    assert second.subset(first.ids) == first


def test_non_numeric_feature_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,a,colour,label\n1,1.0,red,0\n2,2.0,blue,1\n")
    with pytest.raises(SourceError, match=r"not numeric: \['colour'\]"):
        load_source(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,a,label\n1,1.0,\n2,2.0,1\n", "label column 'label' is empty in 1 row"),
        ("id,a,label\n1,1.0,0.5\n2,2.0,1\n", "non-integer values"),
        ("id,a,label\n1,1.0,0\n1,2.0,1\n", r"repeats ids \['1'\]"),
        ("id,label\n1,0\n", "no feature columns"),
        ("id,a,label\n", "no rows"),
    ],
)
def test_bad_tables(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(SourceError, match=message):
        load_source(str(path))


def test_unknown_sources_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        load_source("sklearn:nope")
    message = str(info.value)
    assert "unknown built-in source 'sklearn:nope'" in message
    assert all(name in message for name in known_sources())
    assert "sklearn:digits" in known_sources() and "synthetic:vibration" in BUILTIN_SOURCES
    with pytest.raises(SourceError, match=r"unknown source 'whatever'.*sklearn:digits"):
        load_source("whatever")
    with pytest.raises(SourceError, match=r"no such file.*sklearn:digits"):
        load_source(str(tmp_path / "missing.csv"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"unsupported file type '\.txt'"):
        load_source(str(tmp_path / "notes.txt"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SourceError, match="cannot read"):
        load_source(str(broken))
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, other=np.zeros(3))
    with pytest.raises(SourceError, match="no features; store them as array 'X'"):
        load_source(str(bad_npz))
    assert issubclass(SourceError, ValueError)


def test_file_scheme_prefix(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    table().to_csv(path, index=False)
    assert load_source(f"file://{path}") == load_source(str(path))
