"""Batch prediction from a signed bundle over .npz and .csv files."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent import load_slot
from edge_agent.batch import predict_batch
from model_packager.bundle import BundleError, BundleSignatureError
from model_packager.signing import generate_private_key, public_key_pem
from tests.fixtures.bundles import BuiltBundle


@pytest.fixture(scope="module")
def records(digits_bundle: BuiltBundle) -> np.ndarray:
    with np.load(digits_bundle.slot_dir / "samples.npz") as npz:
        return np.asarray(npz["reference"][:40])  # raw [40, 8, 8]


@pytest.fixture(scope="module")
def expected(digits_bundle: BuiltBundle, records: np.ndarray) -> np.ndarray:
    model = load_slot(digits_bundle.slot_dir)
    return model.runtime.run(model.preprocess.apply(records))


def test_npz_in_npz_out(
    digits_bundle: BuiltBundle, records: np.ndarray, expected: np.ndarray, tmp_path: Path
) -> None:
    inputs = tmp_path / "in.npz"
    ids = np.array([f"r{i}" for i in range(len(records))])
    np.savez(inputs, X=records, ids=ids)
    seen: list[tuple[int, int]] = []
    summary = predict_batch(
        bundle=digits_bundle.path,
        public_key=digits_bundle.public_key,
        inputs=inputs,
        output=tmp_path / "out" / "predictions.npz",
        batch_size=16,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(16, 40), (32, 40), (40, 40)]
    assert (summary.records, summary.batches, summary.model, summary.version) == (
        40,
        3,
        "digits-mlp",
        "1",
    )
    assert summary.variant == "model.int8.onnx" and summary.bundle_digest.startswith("sha256:")
    assert summary.self_test_max_abs_diff <= 1e-5 and summary.records_per_s > 0
    with np.load(summary.output) as out:
        np.testing.assert_array_equal(out["outputs"], expected)
        assert out["labels"].tolist() == [str(i) for i in expected.argmax(axis=1)]
        assert out["record_ids"].tolist() == ids.tolist()
        assert len(set(out["ids"].tolist())) == 40 and "scores" not in out.files
    assert not list((tmp_path / "out").glob(".*partial"))


def test_flat_npz_and_fp32_variant(
    digits_bundle: BuiltBundle, records: np.ndarray, tmp_path: Path
) -> None:
    np.savez(tmp_path / "flat.npz", features=records.reshape(40, 64))
    summary = predict_batch(
        bundle=digits_bundle.path,
        public_key=digits_bundle.public_key,
        inputs=tmp_path / "flat.npz",
        output=tmp_path / "fp32.npz",
        prefer=["onnx:fp32"],
    )
    assert summary.variant == "model.fp32.onnx" and summary.batches == 1
    with np.load(summary.output) as out:
        assert out["outputs"].shape == (40, 10) and "record_ids" not in out.files


def test_csv_in_csv_out_picks_columns_by_name(
    digits_bundle: BuiltBundle, records: np.ndarray, expected: np.ndarray, tmp_path: Path
) -> None:
    names = digits_bundle.manifest["input"]["feature_names"]
    flat = records.reshape(40, 64)
    order = list(reversed(range(64)))  # columns in another order than the manifest's
    with (tmp_path / "in.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *(names[i] for i in order)])
        for n, row in enumerate(flat):
            writer.writerow([f"rec-{n}", *(repr(float(row[i])) for i in order)])
    summary = predict_batch(
        bundle=digits_bundle.path,
        public_key=digits_bundle.public_key,
        inputs=tmp_path / "in.csv",
        output=tmp_path / "out.csv",
        batch_size=7,
    )
    assert summary.batches == 6
    with summary.output.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and rows[0]["record_id"] == "rec-0"
    assert [r["label"] for r in rows] == [str(i) for i in expected.argmax(axis=1)]
    outputs = np.array([[float(r[f"output_{k}"]) for k in range(10)] for r in rows])
    np.testing.assert_array_equal(outputs, expected)


def test_headerless_csv(digits_bundle: BuiltBundle, records: np.ndarray, tmp_path: Path) -> None:
    np.savetxt(tmp_path / "plain.csv", records.reshape(40, 64), delimiter=",")
    summary = predict_batch(
        bundle=digits_bundle.path,
        public_key=digits_bundle.public_key,
        inputs=tmp_path / "plain.csv",
        output=tmp_path / "plain.out.npz",
    )
    assert summary.records == 40


def test_unverified_bundles_and_bad_inputs_are_refused(
    digits_bundle: BuiltBundle, records: np.ndarray, tmp_path: Path
) -> None:
    np.savez(tmp_path / "in.npz", X=records)
    tampered = tmp_path / "tampered.zip"
    shutil.copy(digits_bundle.path, tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    output = tmp_path / "out.npz"
    with pytest.raises(BundleError):
        predict_batch(
            bundle=tampered,
            public_key=digits_bundle.public_key,
            inputs=tmp_path / "in.npz",
            output=output,
        )
    other_key = public_key_pem(generate_private_key())
    with pytest.raises(BundleSignatureError):
        predict_batch(
            bundle=digits_bundle.path,
            public_key=other_key,
            inputs=tmp_path / "in.npz",
            output=output,
        )
    assert not output.exists()
    np.savez(tmp_path / "wrong.npz", X=np.zeros((3, 7)))
    with pytest.raises(
        ValueError, match=r"wrong.npz: digits-mlp@1 expects raw records of shape \[8, 8\]"
    ):
        predict_batch(
            bundle=digits_bundle.path,
            public_key=digits_bundle.public_key,
            inputs=tmp_path / "wrong.npz",
            output=output,
        )
    with pytest.raises(ValueError, match="one of"):
        predict_batch(
            bundle=digits_bundle.path,
            public_key=digits_bundle.public_key,
            inputs=tmp_path / "in.npz",
            output=tmp_path / "out.parquet",
        )
    assert not output.exists()
