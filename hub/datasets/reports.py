"""What dataset validation reports, and the schema it checks against: plain pydantic
models with no numerical dependency, so the admin API's response models load without numpy
and scipy (:mod:`hub.datasets.validation` computes them)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["EXAMPLES", "CheckResult", "DatasetSchema", "Severity", "ValidationReport"]

EXAMPLES = 5  # offending names / ids a check lists
Severity = Literal["error", "warning"]
STATUS = {"error": "FAIL", "warning": "warn"}


class DatasetSchema(BaseModel):
    """What every version of a dataset must look like. A JSON file a person can write.

    ``min``/``max`` hold one bound per flattened feature (``null``: unbounded); a single number
    applies to every feature.
    """

    model_config = ConfigDict(extra="forbid")

    feature_shape: list[int]
    dtype: Literal["float32"] = "float32"
    feature_names: list[str]
    min: list[float | None] | None = None
    max: list[float | None] | None = None
    allowed_labels: list[int] | None = None
    labelled: bool

    @model_validator(mode="before")
    @classmethod
    def _broadcast_bounds(cls, data: Any) -> Any:
        dims = data.get("feature_shape") if isinstance(data, dict) else None
        if isinstance(dims, list) and all(isinstance(d, int) for d in dims):
            for key in ("min", "max"):
                if isinstance(data.get(key), int | float):
                    data = {**data, key: [data[key]] * math.prod(dims)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSchema:
        if not self.feature_shape or any(d < 1 for d in self.feature_shape):
            raise ValueError(f"feature_shape must be positive sizes; got {self.feature_shape}")
        n = self.num_features
        if len(self.feature_names) != n:
            raise ValueError(f"feature_names needs {n} names; got {len(self.feature_names)}")
        for key in ("min", "max"):
            bounds = getattr(self, key)
            if bounds is not None and len(bounds) != n:
                raise ValueError(f"{key} needs one bound per feature ({n}); got {len(bounds)}")
        pairs = zip(self.feature_names, self.min or [None] * n, self.max or [None] * n, strict=True)
        bad = [name for name, lo, hi in pairs if lo is not None and hi is not None and lo > hi]
        if bad:
            raise ValueError(f"min > max for features {bad[:EXAMPLES]}")
        if self.allowed_labels is not None and not self.labelled:
            raise ValueError("allowed_labels is set but labelled is false")
        return self

    @property
    def num_features(self) -> int:
        return math.prod(self.feature_shape)


class CheckResult(BaseModel):
    name: str
    passed: bool
    severity: Severity = "error"
    detail: str
    data: dict[str, Any] = Field(default_factory=dict)
    skipped: bool = False


class ValidationReport(BaseModel):
    passed: bool
    checks: list[CheckResult]
    alpha: float
    reference_version: str | None = None
    num_records: int = 0
    num_reference: int | None = None

    def failures(self) -> list[CheckResult]:
        """Failed checks, errors first."""
        failed = [c for c in self.checks if not c.passed]
        return sorted(failed, key=lambda c: c.severity != "error")

    def render_text(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        failed = ", ".join(c.name for c in self.failures()) or "none"
        summary = f"Dataset validation {verdict}: {len(self.checks)} checks, failed: {failed}"
        ref = "none (first version)"
        if self.num_reference is not None:
            ref = f"{self.reference_version or 'given'} ({self.num_reference} records)"
        lines = [summary, f"  records: {self.num_records}   reference: {ref}   alpha: {self.alpha}"]
        width = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            status = "skip" if c.skipped else "ok" if c.passed else STATUS[c.severity]
            first, *rest = c.detail.splitlines() or [""]
            lines.append(f"  [{status:>4}] {c.name:<{width}}  {first}")
            lines.extend(f"         {'':<{width}}    {more}" for more in rest)
        if not self.passed:
            lines.append("Training is blocked until the data is fixed or a person overrides it.")
        return "\n".join(lines)
