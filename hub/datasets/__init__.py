"""Dataset versions: records, sources, stable splits and validation (pure functions).

The database and artifact-store side lives in :mod:`hub.datasets.service`.
"""

from typing import TYPE_CHECKING

from hub._lazy import attributes

if TYPE_CHECKING:
    from hub.datasets.records import RecordDiff, RecordSet
    from hub.datasets.reports import CheckResult, DatasetSchema, ValidationReport
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

_ORIGIN = {
    "BUILTIN_SOURCES": "sources",
    "CheckResult": "reports",
    "DEFAULT_FRACTIONS": "splits",
    "DatasetSchema": "reports",
    "RecordDiff": "records",
    "RecordSet": "records",
    "SOURCE_MARK": "splits",
    "SourceError": "sources",
    "ValidationReport": "reports",
    "assign_splits": "splits",
    "check_fractions": "splits",
    "content_ids": "sources",
    "fit_layout": "sources",
    "infer_schema": "validation",
    "known_sources": "sources",
    "load_builtin": "sources",
    "load_source": "sources",
    "make_vibration": "sources",
    "px_names": "sources",
    "records_from_frame": "sources",
    "records_to_frame": "sources",
    "register_source": "sources",
    "split_counts": "splits",
    "split_key": "splits",
    "split_of": "splits",
    "split_records": "splits",
    "validate_records": "validation",
}

__getattr__ = attributes(__name__, _ORIGIN)
