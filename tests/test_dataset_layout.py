"""Flat tables for shaped datasets: a CSV or Parquet file feeds an 8x8 image dataset (columns
``px_r_c`` in any order, or in row-major order under other names), exports of a shaped version
import back to the same records, and a failed validation exits non-zero in both output modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from edgeloop_cli import main
from hub.datasets import (
    RecordSet,
    SourceError,
    infer_schema,
    load_builtin,
    load_source,
    records_to_frame,
)
from hub.datasets.service import adopt_label_names

PX = [f"px_{r}_{c}" for r in range(8) for c in range(8)]


@pytest.fixture(scope="module")
def digits() -> RecordSet:
    return load_builtin("sklearn:digits")


def _frame(n: int = 40, *, scale: float = 1.0, columns: list[str] = PX) -> pd.DataFrame:
    bunch = load_digits()
    frame = pd.DataFrame(bunch.data[:n] * scale, columns=columns)
    frame["label"] = bunch.target[:n]
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_px_columns_in_any_order_fill_the_schema_shape(
    tmp_path: Path, digits: RecordSet, suffix: str
) -> None:
    schema = infer_schema(digits)
    frame = _frame()
    shuffled = frame[[*np.random.default_rng(0).permutation(PX).tolist(), "label"]]
    path = tmp_path / f"field{suffix}"
    shuffled.to_csv(path, index=False) if suffix == ".csv" else shuffled.to_parquet(path)
    records = load_source(str(path), schema=schema, target="digits@1")
    assert records.feature_shape == (8, 8) and records.feature_names == tuple(PX)
    np.testing.assert_array_equal(records.features, digits.features[:40])
    # content ids do not depend on the column order: the same rows in the file's order
    in_order = tmp_path / "ordered.csv"
    frame.to_csv(in_order, index=False)
    again = load_source(str(in_order), schema=schema, target="digits@1")
    assert again.ids.tolist() == records.ids.tolist()
    # unnamed (or otherwise named) columns are taken in row-major order
    other = tmp_path / "other.csv"
    _frame(columns=[f"v{i}" for i in range(64)]).to_csv(other, index=False)
    by_order = load_source(str(other), schema=schema, target="digits@1")
    np.testing.assert_array_equal(by_order.features, records.features)
    assert by_order.ids.tolist() == records.ids.tolist()
    # without a schema (or for a flat one) a table stays flat, as before
    assert load_source(str(in_order)).feature_shape == (64,)


def test_counts_that_disagree_say_what_the_dataset_expects(
    tmp_path: Path, digits: RecordSet
) -> None:
    schema = infer_schema(digits)
    short = tmp_path / "field.csv"
    _frame().drop(columns=["px_7_7"]).to_csv(short, index=False)
    with pytest.raises(SourceError) as error:
        load_source(str(short), schema=schema, target="digits@1")
    assert str(error.value).startswith(
        f"{short} has 63 feature columns, digits@1 expects 64 = 8x8 (columns px_0_0..px_7_7 in "
        "any order, or 64 feature columns in row-major order named otherwise) plus 'label', and "
        "optionally 'id'; missing: ['px_7_7']."
    )
    unnamed = tmp_path / "unnamed.csv"
    _frame(columns=[f"v{i}" for i in range(64)]).drop(columns=["v3"]).to_csv(unnamed, index=False)
    with pytest.raises(SourceError, match=r"has 63 feature columns, digits@1 expects 64 = 8x8"):
        load_source(str(unnamed), schema=schema, target="digits@1")
    flat = tmp_path / "flat.npz"
    np.savez(flat, X=digits.flat_features()[:10, :60], y=digits.labels[:10])  # type: ignore[index]
    with pytest.raises(SourceError, match=r"flat.npz has 60 feature columns, digits@1 expects 64"):
        load_source(str(flat), schema=schema, target="digits@1")
    np.savez(flat, X=digits.flat_features()[:10], y=digits.labels[:10])  # type: ignore[index]
    assert load_source(str(flat), schema=schema, target="digits@1").feature_shape == (8, 8)


def test_labels_take_the_parent_versions_names(digits: RecordSet) -> None:
    unnamed = RecordSet(
        ids=digits.ids[:5], features=digits.features[:5], labels=digits.labels[:5],  # type: ignore[index]
        feature_names=digits.feature_names,
    )  # fmt: skip
    assert adopt_label_names(unnamed, digits).label_names == digits.label_names
    cats = RecordSet(
        ids=np.array(["a", "b"]), features=np.zeros((2, 1), np.float32),
        labels=np.array([0, 1]), feature_names=("x",), label_names=("dog", "eel"),
    )  # fmt: skip
    parent = RecordSet(
        ids=np.array(["c"]), features=np.zeros((1, 1), np.float32), labels=np.array([0]),
        feature_names=("x",), label_names=("cat", "dog", "eel"),
    )  # fmt: skip
    named = adopt_label_names(cats, parent)
    assert named.labels.tolist() == [1, 2] and named.label_names == ("cat", "dog", "eel")  # type: ignore[union-attr]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(list(args))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_a_shaped_version_exports_to_a_table_that_reads_back_the_same(
    tmp_path: Path, digits: RecordSet
) -> None:
    schema = infer_schema(digits)
    frame = records_to_frame(digits)
    assert frame.columns.tolist() == ["id", *PX, "label"]
    frame.to_parquet(tmp_path / "digits.parquet", index=False)
    back = load_source(str(tmp_path / "digits.parquet"), schema=schema, target="digits@1")
    back = adopt_label_names(back, digits)
    assert back.manifest_digest() == digits.manifest_digest()


def test_readme_flow_csv_for_digits_and_failed_validation_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's dataset commands on a CSV made from digits, in process (the --hub path
    uploads the same bytes to the same route), on 300 digits to keep it quick."""
    monkeypatch.chdir(tmp_path)
    dd = ["--data-dir", str(tmp_path / "hub")]
    bunch = load_digits()  # 300 of sklearn:digits as the first version (the flow, but faster)
    np.savez(
        "digits.npz",
        X=bunch.images[:300],
        y=bunch.target[:300],
        feature_names=np.array(PX),
        label_names=np.array([str(d) for d in range(10)]),
    )
    code, first = _cli(capsys, *dd, "dataset", "import", "digits.npz", "--name", "digits", "--json")
    assert code == 0 and first["feature_shape"] == [8, 8]
    # export the shaped version as a table and import it back: the very same records
    code, exported = _cli(capsys, *dd, "dataset", "export", "digits@1", "digits.csv", "--json")
    assert code == 0 and exported["path"] == str(tmp_path / "digits.csv"), exported
    assert pd.read_csv("digits.csv").columns.tolist() == ["id", *PX, "label"]
    code, same = _cli(
        capsys, *dd, "dataset", "import", "digits.csv", "--name", "digits", "--append", "--json"
    )
    assert code == 0 and same["created"] is False and same["digest"] == first["digest"]
    # a field CSV made from digits, brighter (a new sensor): validation fails (exit 1, the
    # report as text, not rich markup); the import stores digits@2 (exit 1) to override
    _frame(100, scale=1.3).to_csv("field.csv", index=False)
    assert main([*dd, "dataset", "validate", "field.csv", "--name", "digits"]) == 1
    human = capsys.readouterr().err
    assert "[FAIL] value_ranges" in human and "[  ok] feature_shape" in human, human
    code, made = _cli(
        capsys, *dd, "dataset", "import", "field.csv", "--name", "digits", "--append", "--json"
    )
    assert code == 1 and made["ref"] == "digits@2" and made["validation_status"] == "failed"
    assert made["num_records"] == 300 + 100
    # an .npz append that fails validation exits 1 too, in human mode as well
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=_frame(30, scale=3.0)[PX].to_numpy().reshape(30, 8, 8), y=np.zeros(30, int))
    assert main([*dd, "dataset", "import", str(bad), "--name", "digits", "--append"]) == 1
    human = capsys.readouterr().err
    assert "digits@3 is stored but failed validation" in human
    assert "dataset override digits@3" in human
    # counts that disagree: nothing stored, the JSON error contract
    _frame().drop(columns=["px_0_0"]).to_csv("short.csv", index=False)
    code, err = _cli(
        capsys, *dd, "dataset", "import", "short.csv", "--name", "digits", "--append", "--json"
    )
    assert code == 1 and err["code"] == "invalid_input"
    assert "short.csv has 63 feature columns, digits@3 expects 64 = 8x8" in str(err["error"])
