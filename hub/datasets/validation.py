"""Checks a dataset version must pass before training: schema, values, labels and drift.

Drift compares the records that are new or changed against the reference (the parent
version): a two-sample KS test per feature with a Holm-Bonferroni correction at family-wise
level ``alpha``, and a chi-square test on the label counts. Both block training when they fail.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from hub._lazy import module
from hub.datasets.records import RecordSet
from hub.datasets.reports import EXAMPLES, CheckResult, DatasetSchema, ValidationReport

if TYPE_CHECKING:
    from scipy import stats
else:
    stats = module("scipy.stats")  # ~1 s; only the drift checks use it

MAX_DRIFT_ROWS = 5000  # per side; a fixed-seed subsample of the id-sorted records beyond that
MIN_DRIFT_ROWS = 20  # fewer new records than this: drift is not tested (too little evidence)


def infer_schema(
    records: RecordSet, *, ranges: Literal["global", "per_feature"] = "global", margin: float = 0.1
) -> DatasetSchema:
    """A schema describing ``records``.

    Bounds: the observed min/max over all features (``global``) or per feature, widened on both
    sides by ``margin`` times the overall observed span, so fresh data from the same source
    passes while wrong units or a broken sensor do not.
    """
    flat = records.flat_features().astype(np.float64)
    flat[~np.isfinite(flat)] = np.nan
    lo: list[float | None] | None = None
    hi: list[float | None] | None = None
    if flat.size and np.isfinite(flat).any():
        mins, maxs = np.fmin.reduce(flat, axis=0), np.fmax.reduce(flat, axis=0)  # NaN: no data
        gmin, gmax = float(np.nanmin(mins)), float(np.nanmax(maxs))
        pad = margin * (gmax - gmin)
        if ranges == "global":
            mins[:], maxs[:] = gmin, gmax
        lo = [None if math.isnan(v) else v - pad for v in mins.tolist()]
        hi = [None if math.isnan(v) else v + pad for v in maxs.tolist()]
    allowed: list[int] | None = None
    if records.labels is not None:
        allowed = (
            list(range(len(records.label_names)))
            if records.label_names is not None
            else sorted(int(v) for v in np.unique(records.labels))
        )
    return DatasetSchema(
        feature_shape=list(records.feature_shape),
        feature_names=list(records.feature_names),
        min=lo,
        max=hi,
        allowed_labels=allowed,
        labelled=records.labels is not None,
    )


def _check(name: str, passed: bool, detail: str, **data: Any) -> CheckResult:
    return CheckResult(name=name, passed=passed, detail=detail, data=data)


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name=name, passed=True, detail=f"skipped: {why}", skipped=True)


def _ids(records: RecordSet, rows: npt.NDArray[np.intp]) -> list[str]:
    return [str(i) for i in records.ids[rows[:EXAMPLES]].tolist()]


def _cells(
    name: str,
    bad: npt.NDArray[np.bool_],
    records: RecordSet,
    problem: str,
    bounds: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
) -> CheckResult:
    """A check over feature values: pass, or count and show the bad cells."""
    rows = np.flatnonzero(bad.any(axis=1))
    if not rows.size:
        return _check(name, True, f"no {problem}")
    flat = records.flat_features()
    features = [records.feature_names[c] for c in np.flatnonzero(bad.any(axis=0))]
    examples = []
    for r, c in list(zip(*np.nonzero(bad[rows[:EXAMPLES]]), strict=True))[:EXAMPLES]:
        row = int(rows[r])
        allowed = "" if bounds is None else f" (allowed {bounds[0][c]:g}..{bounds[1][c]:g})"
        examples.append(
            f"{records.ids[row]}/{records.feature_names[c]}={float(flat[row, c]):g}{allowed}"
        )
    detail = (
        f"{int(bad.sum())} {problem} in {rows.size} record(s) and {len(features)} feature(s) "
        f"({', '.join(features[:EXAMPLES])}{', ...' if len(features) > EXAMPLES else ''}), "
        f"e.g. {', '.join(examples)}"
    )
    data = {"values": int(bad.sum()), "records": int(rows.size), "features": features}
    return _check(name, False, detail, **data, examples=examples, example_ids=_ids(records, rows))


def _check_values(records: RecordSet, schema: DatasetSchema, shape_ok: bool) -> list[CheckResult]:
    flat = records.flat_features()
    finite = _cells("finite_values", ~np.isfinite(flat), records, "NaN/inf values")
    if not shape_ok:
        return [finite, _skip("value_ranges", "feature shape or names differ from the schema")]
    if schema.min is None and schema.max is None:
        return [finite, _skip("value_ranges", "the schema sets no min/max")]
    lo = np.array([-np.inf if v is None else v for v in schema.min or [None] * flat.shape[1]])
    hi = np.array([np.inf if v is None else v for v in schema.max or [None] * flat.shape[1]])
    with np.errstate(invalid="ignore"):
        out = np.isfinite(flat) & ((flat < lo[None, :]) | (flat > hi[None, :]))
    return [finite, _cells("value_ranges", out, records, "values out of range", (lo, hi))]


def _check_labels(records: RecordSet, schema: DatasetSchema) -> CheckResult:
    if records.labels is None:
        if schema.labelled:
            return _check("labels", False, "the schema needs labels but the records have none")
        return _check("labels", True, "unlabelled, as the schema says")
    if not schema.labelled:
        return _check("labels", False, "the records have labels but the schema says unlabelled")
    if schema.allowed_labels is None:
        return _check("labels", True, f"{len(records)} labels (the schema allows any)")
    unknown = ~np.isin(records.labels, np.array(schema.allowed_labels, dtype=np.int64))
    if not unknown.any():
        return _check("labels", True, f"all labels in {schema.allowed_labels}")
    rows = np.flatnonzero(unknown)
    values, counts = np.unique(records.labels[rows], return_counts=True)
    found = {str(v): int(n) for v, n in zip(values.tolist(), counts.tolist(), strict=True)}
    listed = ", ".join(f"{v} ({n}x)" for v, n in found.items())
    return _check(
        "labels",
        False,
        f"{rows.size} record(s) have labels outside {schema.allowed_labels}: {listed}; "
        f"e.g. records {_ids(records, rows)}",
        unknown=found,
        example_ids=_ids(records, rows),
    )


def _sample(records: RecordSet, max_rows: int) -> RecordSet:
    ordered = records.sorted_by_id()
    if len(ordered) <= max_rows:
        return ordered
    rows = np.random.default_rng(0).choice(len(ordered), size=max_rows, replace=False)
    return ordered.subset(np.sort(rows))


def holm(p_values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Holm-Bonferroni adjusted p-values (reject where adjusted <= alpha)."""
    m = p_values.size
    order = np.argsort(p_values, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p_values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _feature_drift(new: RecordSet, ref: RecordSet, alpha: float) -> CheckResult:
    a, b = new.flat_features(), ref.flat_features()
    tested: list[tuple[str, float, float]] = []
    constant = 0
    for j, name in enumerate(new.feature_names):
        x, y = a[:, j][np.isfinite(a[:, j])], b[:, j][np.isfinite(b[:, j])]
        if x.size < MIN_DRIFT_ROWS or y.size < MIN_DRIFT_ROWS:
            continue
        if x.min() == x.max() == y.min() == y.max():
            constant += 1
            continue
        with warnings.catch_warnings():  # "exact calculation unsuccessful": falls back to asymp
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ks_2samp(x, y)
        tested.append((name, float(res.statistic), float(res.pvalue)))
    test = f"two-sample KS per feature, Holm-Bonferroni over {len(tested)} features"
    if not tested:
        return _skip("feature_drift", f"no feature varies ({constant} constant in both)")
    adjusted = holm(np.array([p for _, _, p in tested]))
    rows = [
        dict(zip(("feature", "statistic", "p_value"), tested[k], strict=True))
        | {"p_holm": float(adjusted[k])}
        for k in np.argsort(adjusted, kind="stable").tolist()
        if adjusted[k] <= alpha
    ]
    data = {"test": "ks_2samp+holm", "alpha": alpha, "tested": len(tested)}
    data |= {"skipped_constant": constant, "drifted": rows, "min_p_holm": float(adjusted.min())}
    if not rows:
        detail = f"no drift ({test}; smallest corrected p = {adjusted.min():.3g} > alpha {alpha})"
        return _check("feature_drift", True, detail, **data)
    lines = [f"{len(rows)} feature(s) drifted ({test}, family-wise alpha {alpha}):"]
    lines += [
        f"{r['feature']}: KS D={r['statistic']:.3f}, p={r['p_value']:.3g}, Holm p={r['p_holm']:.3g}"
        for r in rows[:10]
    ]
    lines += [f"... and {len(rows) - 10} more"] if len(rows) > 10 else []
    return _check("feature_drift", False, "\n".join(lines), **data)


def _label_drift(new: RecordSet, ref: RecordSet, alpha: float) -> CheckResult:
    assert new.labels is not None and ref.labels is not None
    classes = np.union1d(new.labels, ref.labels)
    if classes.size < 2:
        return _skip("label_drift", "fewer than two classes")
    counts = np.array(
        [[int(np.count_nonzero(s == c)) for c in classes] for s in (ref.labels, new.labels)]
    )
    res = stats.chi2_contingency(counts)
    chi2, p, dof = float(res.statistic), float(res.pvalue), int(res.dof)
    share = counts / counts.sum(axis=1, keepdims=True)
    moved = np.argsort(-np.abs(share[1] - share[0]))[:EXAMPLES]
    names = ref.label_names if ref.label_names == new.label_names else None
    label = [names[c] if names and c < len(names) else str(c) for c in classes.tolist()]
    shifts = [f"{label[k]}: {share[0, k]:.1%} → {share[1, k]:.1%}" for k in moved]
    small = bool((res.expected_freq < 5).any())
    data = {"test": "chi2_contingency", "alpha": alpha, "statistic": chi2, "p_value": p}
    data |= {"dof": dof, "classes": classes.tolist(), "counts_reference": counts[0].tolist()}
    data |= {"counts_new": counts[1].tolist(), "small_expected_counts": small}
    note = " (some expected counts < 5: approximate)" if small else ""
    verdict = "label distribution changed" if p <= alpha else "no label drift"
    detail = (
        f"{verdict} (chi-square, chi2={chi2:.2f}, dof={dof}, p={p:.3g}, alpha {alpha}){note}; "
        f"largest shifts (reference → new): {', '.join(shifts)}"
    )
    return _check("label_drift", p > alpha, detail, **data)


def validate_records(
    records: RecordSet,
    *,
    schema: DatasetSchema,
    reference: RecordSet | None = None,
    alpha: float = 0.01,
    reference_version: str | None = None,
    drift_sample: Literal["new", "all"] = "new",
    max_rows: int = MAX_DRIFT_ROWS,
) -> ValidationReport:
    """Run every check; ``passed`` is false when any error-severity check failed.

    With a ``reference`` (the parent version), drift tests compare the records that are not
    in it unchanged (``drift_sample="new"``; records carried over from the parent would only
    dilute the test) or all records (``"all"``) against the reference.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    checks = [_check("unique_ids", True, f"{len(records)} ids, all unique")]
    found, expected = records.feature_shape, tuple(schema.feature_shape)
    shape_ok = found == expected
    detail = f"{found} float32" if shape_ok else f"features have shape {found}, schema {expected}"
    checks.append(_check("feature_shape", shape_ok, detail, found=[*found], expected=[*expected]))
    pairs = zip(schema.feature_names, records.feature_names, strict=False)
    wrong = [f"#{i}: {r!r} (schema: {s!r})" for i, (s, r) in enumerate(pairs) if s != r]
    names_ok = shape_ok and not wrong
    if not shape_ok:
        checks.append(_skip("feature_names", "feature shape differs from the schema"))
    else:
        detail = f"{len(wrong)} feature name(s) differ from the schema, e.g. {wrong[:EXAMPLES]}"
        checks.append(_check("feature_names", names_ok, detail if wrong else "match the schema"))
    checks += _check_values(records, schema, names_ok)
    checks.append(_check_labels(records, schema))
    if reference is not None:
        checks += _drift_checks(records, reference, alpha, drift_sample, max_rows)
    return ValidationReport(
        passed=all(c.passed for c in checks if c.severity == "error"),
        checks=checks,
        alpha=alpha,
        reference_version=reference_version,
        num_records=len(records),
        num_reference=None if reference is None else len(reference),
    )


def _drift_checks(
    records: RecordSet,
    reference: RecordSet,
    alpha: float,
    drift_sample: Literal["new", "all"],
    max_rows: int,
) -> list[CheckResult]:
    if records.feature_shape != reference.feature_shape:
        shapes = f"{records.feature_shape} vs the reference's {reference.feature_shape}"
        return [_check("feature_drift", False, f"cannot compare feature shapes {shapes}")]
    new = records.subset(records.not_in(reference)) if drift_sample == "new" else records
    what = "new or changed records" if drift_sample == "new" else "records"
    if len(new) < MIN_DRIFT_ROWS or len(reference) < MIN_DRIFT_ROWS:
        why = f"{len(new)} {what}, {len(reference)} reference records (need {MIN_DRIFT_ROWS})"
        return [_skip("feature_drift", why), _skip("label_drift", why)]
    new_s, ref_s = _sample(new, max_rows), _sample(reference, max_rows)
    scope = f"{len(new_s)} {what} vs {len(ref_s)} reference records"
    checks = [_feature_drift(new_s, ref_s, alpha)]
    if new.labels is not None and reference.labels is not None:
        checks.append(_label_drift(new_s, ref_s, alpha))
    for check in checks:
        check.data["compared"] = scope
        if not check.skipped:
            check.detail = f"{check.detail}\n[{scope}]"
    return checks
