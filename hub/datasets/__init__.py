"""Dataset versions: records, sources, stable splits and validation (pure functions).

The database and artifact-store side lives in :mod:`hub.datasets.service`.
"""

from hub.datasets.records import RecordDiff, RecordSet
from hub.datasets.sources import (
    BUILTIN_SOURCES,
    SourceError,
    content_ids,
    fit_layout,
    known_sources,
    load_builtin,
    load_source,
    make_vibration,
    px_names,
    records_from_frame,
    records_to_frame,
    register_source,
)
from hub.datasets.splits import (
    DEFAULT_FRACTIONS,
    SOURCE_MARK,
    assign_splits,
    check_fractions,
    split_counts,
    split_key,
    split_of,
    split_records,
)
from hub.datasets.validation import (
    CheckResult,
    DatasetSchema,
    ValidationReport,
    infer_schema,
    validate_records,
)

__all__ = [
    "BUILTIN_SOURCES",
    "DEFAULT_FRACTIONS",
    "SOURCE_MARK",
    "CheckResult",
    "DatasetSchema",
    "RecordDiff",
    "RecordSet",
    "SourceError",
    "ValidationReport",
    "assign_splits",
    "check_fractions",
    "content_ids",
    "fit_layout",
    "infer_schema",
    "known_sources",
    "load_builtin",
    "load_source",
    "make_vibration",
    "px_names",
    "records_from_frame",
    "records_to_frame",
    "register_source",
    "split_counts",
    "split_key",
    "split_of",
    "split_records",
    "validate_records",
]
