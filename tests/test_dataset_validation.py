"""validate_records: schema checks name the problem; drift tests catch shifts, not re-splits."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
import pydantic
import pytest

from hub.datasets import (
    DatasetSchema,
    RecordSet,
    ValidationReport,
    infer_schema,
    load_source,
    make_vibration,
    validate_records,
)
from hub.datasets.validation import holm


@pytest.fixture(scope="module")
def digits() -> RecordSet:
    return load_source("sklearn:digits")


@pytest.fixture(scope="module")
def schema(digits: RecordSet) -> DatasetSchema:
    return infer_schema(digits)


def halves(records: RecordSet, seed: int) -> tuple[RecordSet, RecordSet]:
    order = np.random.default_rng(seed).permutation(len(records))
    half = len(records) // 2
    return records.subset(order[:half]), records.subset(order[half:])


def renew(
    base: RecordSet,
    *,
    features: npt.NDArray[np.float32] | None = None,
    labels: npt.NDArray[np.int64] | None = None,
    suffix: str = "-new",
) -> RecordSet:
    """A copy of ``base`` with fresh ids (new records), optionally other features/labels."""
    return RecordSet(
        ids=np.char.add(base.ids, suffix),
        features=base.features if features is None else features,
        labels=base.labels if labels is None else labels,
        feature_names=base.feature_names,
        label_names=base.label_names,
    )


def failed(report: ValidationReport) -> list[str]:
    return [c.name for c in report.failures()]


def test_clean_digits_pass_against_themselves_and_their_parent(
    digits: RecordSet, schema: DatasetSchema
) -> None:
    report = validate_records(digits, schema=schema, reference=digits)
    assert report.passed, report.render_text()
    # a random parent: digits in file order do drift (px_0_3 differs between the first 1200
    # and the last 597, the writers changed), which the check rightly reports
    order = np.random.default_rng(0).permutation(len(digits))
    parent = digits.subset(order[:1200])
    child = parent.merge(digits.subset(order[1200:]))
    report = validate_records(child, schema=infer_schema(parent), reference=parent, alpha=0.01)
    assert report.passed, report.render_text()
    drift = next(c for c in report.checks if c.name == "feature_drift")
    assert not drift.skipped and "597 new or changed records vs 1200 reference" in drift.detail
    assert drift.data["skipped_constant"] >= 1  # px_0_0 is always 0
    no_ref = validate_records(digits, schema=schema)
    assert no_ref.passed and "feature_drift" not in [c.name for c in no_ref.checks]


def test_nan_fails_finite_values(digits: RecordSet, schema: DatasetSchema) -> None:
    features = digits.features.copy()
    features[7, 3, 3] = np.nan
    features[9, 0, 1] = np.inf
    report = validate_records(renew(digits, features=features, suffix=""), schema=schema)
    assert not report.passed and failed(report) == ["finite_values"]
    check = report.failures()[0]
    assert check.data["records"] == 2 and check.data["example_ids"] == [
        "digits-00007",
        "digits-00009",
    ]
    assert "px_3_3" in check.detail and "px_0_1" in check.detail


def test_out_of_range_fails_value_ranges(digits: RecordSet, schema: DatasetSchema) -> None:
    features = digits.features.copy()
    features[:3, 4, 4] = 255.0  # wrong units: 0..255 instead of 0..16
    report = validate_records(renew(digits, features=features, suffix=""), schema=schema)
    assert failed(report) == ["value_ranges"]
    check = report.failures()[0]
    assert (check.data["values"], check.data["records"], check.data["features"]) == (
        3,
        3,
        ["px_4_4"],
    )
    assert "digits-00000/px_4_4=255" in check.detail


def test_unknown_label_fails_labels(digits: RecordSet, schema: DatasetSchema) -> None:
    subset = digits.subset(np.arange(100))
    assert subset.labels is not None
    labels = subset.labels.copy()
    labels[5] = 12
    odd = RecordSet(
        ids=subset.ids, features=subset.features, labels=labels, feature_names=subset.feature_names
    )
    report = validate_records(odd, schema=schema)
    assert failed(report) == ["labels"]
    assert report.failures()[0].data["unknown"] == {"12": 1}
    assert "12 (1x)" in report.render_text()
    unlabelled = RecordSet(
        ids=subset.ids, features=subset.features, feature_names=subset.feature_names
    )
    assert failed(validate_records(unlabelled, schema=schema)) == ["labels"]


def test_wrong_shape_fails_feature_shape(digits: RecordSet, schema: DatasetSchema) -> None:
    flat = RecordSet(
        ids=digits.ids,
        features=digits.flat_features(),
        labels=digits.labels,
        feature_names=digits.feature_names,
        label_names=digits.label_names,
    )
    report = validate_records(flat, schema=schema, reference=digits)
    assert "feature_shape" in failed(report)
    assert "(64,)" in report.render_text() and "(8, 8)" in report.render_text()
    renamed = RecordSet(
        ids=digits.ids,
        features=digits.features,
        labels=digits.labels,
        feature_names=tuple(f"p{i}" for i in range(64)),
        label_names=digits.label_names,
    )
    assert failed(validate_records(renamed, schema=schema)) == ["feature_names"]


def test_shifted_copy_fails_ks(digits: RecordSet, schema: DatasetSchema) -> None:
    parent, batch = halves(digits, 0)
    rng = np.random.default_rng(1)
    noisy = np.clip(batch.features + rng.normal(0, 1.0, batch.features.shape), 0, 16)
    report = validate_records(
        renew(batch, features=noisy.astype(np.float32)), schema=schema, reference=parent
    )
    assert failed(report) == ["feature_drift"], report.render_text()
    shifted = batch.features.copy()
    shifted[:, 2:4, 2:6] += 3  # brighter pixels in one region (and over the range)
    report = validate_records(renew(batch, features=shifted), schema=schema, reference=parent)
    assert "feature_drift" in failed(report)
    drift = next(c for c in report.checks if c.name == "feature_drift")
    drifted = {row["feature"] for row in drift.data["drifted"]}
    assert drifted and drifted <= {f"px_{r}_{c}" for r in (2, 3) for c in range(2, 6)}
    assert all(
        row["p_holm"] <= 0.01 and row["p_holm"] >= row["p_value"] for row in drift.data["drifted"]
    )
    text = report.render_text()
    assert "KS" in text and "Holm" in text and "alpha 0.01" in text and "FAILED" in text


def test_shifted_batch_appended_to_parent_is_caught(
    digits: RecordSet, schema: DatasetSchema
) -> None:
    """Only the new records are compared, so a small bad batch is not diluted by the parent."""
    parent, rest = halves(digits, 2)
    batch = rest.subset(np.arange(150))
    noisy = np.clip(
        batch.features + np.random.default_rng(3).normal(0, 1, batch.features.shape), 0, 16
    )
    child = parent.merge(renew(batch, features=noisy.astype(np.float32)))
    assert "feature_drift" in failed(validate_records(child, schema=schema, reference=parent))


def test_label_prior_shift_fails_chi_square(digits: RecordSet, schema: DatasetSchema) -> None:
    parent, batch = halves(digits, 4)
    assert batch.labels is not None
    keep = (batch.labels < 5) | (np.random.default_rng(5).random(len(batch)) < 0.4)
    report = validate_records(batch.subset(keep), schema=schema, reference=parent)
    assert "label_drift" in failed(report)
    check = next(c for c in report.checks if c.name == "label_drift")
    assert check.data["test"] == "chi2_contingency" and check.data["p_value"] < 0.01
    assert "chi-square" in check.detail and "→" in check.detail


def test_random_resplits_rarely_alarm(digits: RecordSet, schema: DatasetSchema) -> None:
    alarms = []
    for seed in range(20):
        reference, candidate = halves(digits, 100 + seed)
        report = validate_records(candidate, schema=schema, reference=reference, alpha=0.01)
        alarms += [] if report.passed else [(seed, failed(report))]
    assert len(alarms) <= 2, alarms


def test_vibration_healthy_passes_faulty_drifts() -> None:
    healthy = load_source("synthetic:vibration")
    vib_schema = infer_schema(healthy)
    assert not vib_schema.labelled and vib_schema.allowed_labels is None
    fresh = make_vibration(n_windows=500, seed=77, id_prefix="vib77")
    assert validate_records(fresh, schema=vib_schema, reference=healthy).passed
    faulty = load_source("synthetic:vibration-faulty")
    report = validate_records(faulty, schema=vib_schema, reference=healthy)
    assert "feature_drift" in failed(report)
    assert "label_drift" not in [c.name for c in report.checks]


def test_subsampling_is_bounded_and_order_independent(
    digits: RecordSet, schema: DatasetSchema
) -> None:
    parent, batch = halves(digits, 6)
    a = validate_records(batch, schema=schema, reference=parent, max_rows=300)
    shuffled = batch.subset(np.random.default_rng(0).permutation(len(batch)))
    b = validate_records(shuffled, schema=schema, reference=parent, max_rows=300)
    assert a == b
    assert "300 new or changed records vs 300 reference records" in a.checks[-1].detail


def test_too_few_new_records_skip_drift(digits: RecordSet, schema: DatasetSchema) -> None:
    parent = digits.subset(np.arange(1000))
    child = parent.merge(digits.subset(np.arange(1000, 1010)))
    report = validate_records(child, schema=schema, reference=parent)
    assert report.passed
    assert all(c.skipped for c in report.checks if c.name.endswith("_drift"))
    assert "skip" in report.render_text()


def test_report_round_trips_through_json(digits: RecordSet, schema: DatasetSchema) -> None:
    parent, batch = halves(digits, 8)
    features = batch.features.copy()
    features[0, 0, 0] = np.nan
    report = validate_records(batch, schema=schema, reference=parent, reference_version="digits@1")
    for r in (report, validate_records(renew(batch, features=features), schema=schema)):
        again = ValidationReport.model_validate(json.loads(json.dumps(r.model_dump(mode="json"))))
        assert again.render_text() == r.render_text()
        assert [c.name for c in again.failures()] == [c.name for c in r.failures()]
    assert "digits@1 (898 records)" in report.render_text()


def test_schema_from_a_users_json_file(digits: RecordSet) -> None:
    text = json.dumps(
        {
            "feature_shape": [8, 8],
            "feature_names": list(digits.feature_names),
            "min": 0,
            "max": 16,
            "allowed_labels": list(range(10)),
            "labelled": True,
        }
    )
    user = DatasetSchema.model_validate_json(text)
    assert user.min == [0.0] * 64 and user.num_features == 64
    assert validate_records(digits, schema=user).passed
    assert DatasetSchema.model_validate_json(user.model_dump_json()) == user
    with pytest.raises(pydantic.ValidationError, match="extra"):
        DatasetSchema.model_validate_json(text.replace('"labelled"', '"labeled"'))
    with pytest.raises(pydantic.ValidationError, match="feature_names needs 64 names"):
        DatasetSchema.model_validate({**json.loads(text), "feature_names": ["a"]})
    with pytest.raises(pydantic.ValidationError, match="min > max"):
        DatasetSchema.model_validate({**json.loads(text), "min": 20})
    with pytest.raises(pydantic.ValidationError, match="allowed_labels is set but labelled"):
        DatasetSchema.model_validate({**json.loads(text), "labelled": False})


def test_infer_schema_ranges(digits: RecordSet) -> None:
    wide = infer_schema(digits)
    assert wide.min == [-1.6] * 64 and wide.max == [17.6] * 64
    assert wide.allowed_labels == list(range(10)) and wide.labelled
    tight = infer_schema(digits, ranges="per_feature", margin=0.0)
    assert tight.max is not None and tight.max[0] == 0.0 and max(v or 0 for v in tight.max) == 16.0
    with pytest.raises(ValueError, match="alpha"):
        validate_records(digits, schema=wide, alpha=0)


def test_holm_adjustment() -> None:
    adjusted = holm(np.array([0.01, 0.04, 0.03, 0.005]))
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])
