"""Where records come from: built-in datasets by ``scheme:name``, or ``.npz``/``.csv``/``.parquet``.

Built-ins need no download. Files follow simple rules (see :func:`load_source`); rows without
an id get a content-derived one, so the ids of existing rows stay put when a file grows.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hub._lazy import module
from hub.core.errors import InvalidInput
from hub.datasets.records import RecordSet

if TYPE_CHECKING:  # (validation imports scipy: not needed to read a file)
    import pandas as pd

    from hub.datasets.reports import DatasetSchema
else:
    pd = module("pandas")  # ~0.4 s; only files and tables need it

FILE_SUFFIXES = (".npz", ".csv", ".parquet", ".pq")
SHOWN = 5  # how many column names an error lists
VIBRATION_SEED = 20240611
VIBRATION_AXES = ("ax", "ay", "az")

Loader = Callable[[], RecordSet]
BUILTIN_SOURCES: dict[str, Loader] = {}


class SourceError(InvalidInput, ValueError):
    """A source that cannot be loaded; the message says what to do instead."""


def register_source(name: str) -> Callable[[Loader], Loader]:
    """Register a built-in source under ``scheme:name``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*:[a-z0-9][a-z0-9_.-]*", name):
        raise ValueError(f"built-in source names look like 'scheme:name'; got {name!r}")

    def add(loader: Loader) -> Loader:
        BUILTIN_SOURCES[name] = loader
        return loader

    return add


def known_sources() -> list[str]:
    return sorted(BUILTIN_SOURCES)


def load_builtin(name: str) -> RecordSet:
    """Records of the built-in source ``name``; anything else (a path, ``file:``...) is refused
    with one message that says nothing about the filesystem (what the API imports from)."""
    loader = BUILTIN_SOURCES.get(name)
    if loader is None:
        raise SourceError(
            f"source {name!r} is not a built-in source (one of {', '.join(known_sources())}); "
            "files are uploaded, not read from the hub's disk"
        )
    return loader()


def _help() -> str:
    return (
        f"use a built-in source ({', '.join(known_sources())}) or the path of a "
        f"{'/'.join(FILE_SUFFIXES[:3])} file"
    )


def load_source(
    source: str,
    *,
    label_column: str | None = "label",
    id_column: str | None = "id",
    schema: DatasetSchema | None = None,
    target: str = "the dataset",
) -> RecordSet:
    """Records from a built-in source or a file.

    Files, by suffix:

    * ``.npz``: features in ``X`` or ``features`` (shape ``(N, ...)``), optional labels in ``y``
      or ``labels``, optional ``ids``, ``feature_names``, ``label_names``.
    * ``.csv`` / ``.parquet``: ``id_column`` and ``label_column`` if present; every other
      column is a numeric feature.

    ``schema`` (the dataset's, named ``target`` in messages, e.g. ``digits@1``) lays out a file
    whose records are flat for a dataset whose records are shaped (e.g. ``8x8``): see
    :func:`fit_layout`. ``label_column=None`` loads a file as unlabelled and ``id_column=None``
    ignores stored ids (for ``.npz`` too); built-in sources ignore all three. Without ids, a
    record's id is the first 16 hex of the sha256 of its row (features as float32 in the
    dataset's layout, then the label), with ``-1``, ``-2``.. appended to repeats of an
    identical row. Non-negative integer labels are kept; other label values (strings,
    negatives) become indices into sorted ``label_names``.
    """
    if source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[source]()
    raw = source.removeprefix("file://").removeprefix("file:")
    path = Path(raw).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise SourceError(f"no such file: {str(path)!r}; check the path, or {_help()}")
        try:
            if suffix == ".npz":
                return _from_npz(
                    path,
                    label_column=label_column,
                    id_column=id_column,
                    schema=schema,
                    target=target,
                )
            reader = pd.read_csv if suffix == ".csv" else pd.read_parquet
            frame = reader(path)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"cannot read {str(path)!r} as {suffix}: {exc}") from exc
        return records_from_frame(
            frame,
            label_column=label_column,
            id_column=id_column,
            origin=str(path),
            schema=schema,
            target=target,
        )
    scheme = source.split(":", 1)[0] if ":" in source else None
    if scheme in {name.split(":", 1)[0] for name in BUILTIN_SOURCES}:
        raise SourceError(f"unknown built-in source {source!r}; {_help()}")
    if path.exists():
        raise SourceError(f"unsupported file type {suffix or '(none)'!r} for {raw!r}; {_help()}")
    raise SourceError(f"unknown source {source!r}; {_help()}")


def content_ids(
    features: npt.NDArray[np.float32], label_text: list[str] | None = None
) -> npt.NDArray[np.str_]:
    """Ids from row content: sha256(float32 row bytes [+ NUL + label]) [:16], ``-k`` on repeats."""
    flat = np.ascontiguousarray(features.reshape(features.shape[0], -1), dtype="<f4")
    seen: dict[str, int] = {}
    ids = []
    for i in range(flat.shape[0]):
        h = hashlib.sha256(flat[i].tobytes())
        if label_text is not None:
            h.update(b"\x00" + label_text[i].encode("utf-8"))
        key = h.hexdigest()[:16]
        count = seen.get(key, 0)
        seen[key] = count + 1
        ids.append(key if count == 0 else f"{key}-{count}")
    return np.array(ids, dtype=np.str_)


def _labels(
    values: npt.NDArray[Any], *, origin: str, column: str
) -> tuple[npt.NDArray[np.int64], tuple[str, ...] | None, list[str]]:
    """Integer labels, their names (None: the labels are the classes) and text for content ids."""
    series = pd.Series(values)
    missing = np.flatnonzero(series.isna().to_numpy())
    if missing.size:
        raise SourceError(
            f"{origin}: label column {column!r} is empty in {missing.size} row(s), e.g. rows "
            f"{missing[:5].tolist()}; fill them in, drop those rows, or pass label_column=None"
        )
    if pd.api.types.is_bool_dtype(series):
        series = series.astype(np.int64)
    if pd.api.types.is_numeric_dtype(series):
        numbers = series.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(numbers)) or not np.all(numbers == np.round(numbers)):
            raise SourceError(
                f"{origin}: label column {column!r} has non-integer values; labels are class "
                "ids (regression targets are not supported: pass label_column=None)"
            )
        ints = numbers.astype(np.int64)
        text = [str(v) for v in ints.tolist()]
        if ints.size == 0 or ints.min() >= 0:
            return ints, None, text
        classes = np.unique(ints)
        return np.searchsorted(classes, ints).astype(np.int64), tuple(map(str, classes)), text
    text = [str(v) for v in series.tolist()]
    names = tuple(sorted(set(text)))
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup[t] for t in text], dtype=np.int64), names, text


def _ids(values: npt.NDArray[Any], *, origin: str, column: str) -> npt.NDArray[np.str_]:
    series = pd.Series(values)
    if pd.api.types.is_float_dtype(series) and not series.isna().any():
        numbers = series.to_numpy()
        if np.all(numbers == np.round(numbers)):
            series = series.astype(np.int64)
    text = ["" if pd.isna(v) else str(v).strip() for v in series.tolist()]
    empty = [i for i, t in enumerate(text) if not t]
    if empty:
        raise SourceError(f"{origin}: id column {column!r} is empty in rows {empty[:5]}")
    ids = np.array(text, dtype=np.str_)
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.size != ids.size:
        raise SourceError(
            f"{origin}: id column {column!r} repeats ids {uniq[counts > 1][:5].tolist()}; ids "
            "must be unique (or pass id_column=None for content-derived ids)"
        )
    return ids


def px_names(shape: tuple[int, ...]) -> tuple[str, ...]:
    """``px_<i>_<j>..`` column names of a record of ``shape``, in row-major order."""
    return tuple("px_" + "_".join(map(str, idx)) for idx in np.ndindex(*shape))


def fit_layout(
    flat: npt.NDArray[np.float32],
    columns: tuple[str, ...],
    schema: DatasetSchema | None,
    *,
    origin: str,
    target: str,
    label_column: str | None = "label",
) -> tuple[npt.NDArray[np.float32], tuple[str, ...]]:
    """Flat features ``(N, K)`` named ``columns`` → the layout of a shaped ``schema``.

    Nothing changes unless the schema's records have two or more axes (an image ``8x8``, a
    ``3x64`` window). Then the ``K`` columns are the record's values: named like the schema's
    feature names or ``px_<i>_<j>`` (:func:`px_names`), in any order; or, when none is so
    named, ``K`` columns in row-major order. The result has the schema's shape and feature
    names; anything else is a :class:`SourceError` that says which columns are expected.
    """
    shape = tuple(schema.feature_shape) if schema is not None else ()
    if schema is None or len(shape) < 2 or flat.ndim != 2:
        return flat, columns
    size = math.prod(shape)
    names = tuple(schema.feature_names)
    for wanted in (names, px_names(shape)):
        if len(columns) == size and set(columns) == set(wanted):
            position = {c: i for i, c in enumerate(columns)}
            order = [position[w] for w in wanted]
            return flat[:, order].reshape(flat.shape[0], *shape), names
    known = set(names) | set(px_names(shape))
    named = [c for c in columns if c in known]
    if len(columns) == size and not named:
        return flat.reshape(flat.shape[0], *shape), names
    dims = "x".join(map(str, shape))
    label = f" plus {label_column!r}" if schema.labelled and label_column else ""
    message = (
        f"{origin} has {len(columns)} feature columns, {target} expects {size} = {dims} "
        f"(columns {names[0]}..{names[-1]} in any order, or {size} feature columns in row-major "
        f"order named otherwise){label}, and optionally 'id'"
    )
    if named:
        wanted_names = names if set(named) <= set(names) else px_names(shape)
        missing = [w for w in wanted_names if w not in set(columns)]
        extra = [c for c in columns if c not in set(wanted_names)]
        if missing:
            message += f"; missing: {missing[:SHOWN]}"
        if extra:
            message += f"; not features of {target}: {extra[:SHOWN]}"
    raise SourceError(message + ". Fix the file's columns, or import it as another dataset")


def records_to_frame(records: RecordSet) -> pd.DataFrame:
    """Records → a table that :func:`records_from_frame` reads back to the same records: ``id``,
    one column per flattened feature (the feature names, row-major: ``px_0_0``..), ``label``
    (the class index) when labelled. Float32 values survive a CSV round trip exactly."""
    frame = pd.DataFrame(records.flat_features(), columns=list(records.feature_names))
    frame.insert(0, "id", records.ids.tolist())
    if records.labels is not None:
        frame["label"] = records.labels
    return frame


def records_from_frame(
    frame: pd.DataFrame,
    *,
    label_column: str | None = "label",
    id_column: str | None = "id",
    origin: str = "table",
    schema: DatasetSchema | None = None,
    target: str = "the dataset",
) -> RecordSet:
    """A table → records: optional id and label columns, every other column a numeric feature
    (laid out by a shaped ``schema``: :func:`fit_layout`)."""
    frame = frame.rename(columns=str)
    use_ids = id_column is not None and id_column in frame.columns
    use_labels = label_column is not None and label_column in frame.columns
    feature_columns = [c for c in frame.columns if c not in {id_column, label_column}]
    if not feature_columns:
        raise SourceError(f"{origin}: no feature columns (columns: {list(frame.columns)})")
    if frame.shape[0] == 0:
        raise SourceError(f"{origin}: the table has no rows")
    bad = [c for c in feature_columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise SourceError(
            f"{origin}: feature columns must be numeric; not numeric: {bad[:10]}. Encode them as "
            f"numbers, or drop them (the id column is {id_column!r}, the label column "
            f"{label_column!r}: pass id_column=/label_column= if yours are named differently)"
        )
    features = frame[feature_columns].to_numpy(dtype=np.float32, na_value=np.nan)
    features, feature_names = fit_layout(
        features,
        tuple(feature_columns),
        schema,
        origin=origin,
        target=target,
        label_column=label_column,
    )
    labels, label_names, label_text = None, None, None
    if use_labels:
        assert label_column is not None
        labels, label_names, label_text = _labels(
            frame[label_column].to_numpy(), origin=origin, column=label_column
        )
    if use_ids:
        assert id_column is not None
        ids = _ids(frame[id_column].to_numpy(), origin=origin, column=id_column)
    else:
        ids = content_ids(features, label_text)
    try:
        return RecordSet(
            ids=ids,
            features=features,
            labels=labels,
            feature_names=feature_names,
            label_names=label_names,
        )
    except ValueError as exc:
        raise SourceError(f"{origin}: {exc}") from exc


def _from_npz(
    path: Path,
    *,
    label_column: str | None,
    id_column: str | None,
    schema: DatasetSchema | None,
    target: str,
) -> RecordSet:
    origin = str(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    key = next((k for k in ("X", "features") if k in arrays), None)
    if key is None:
        raise SourceError(
            f"{origin}: no features; store them as array 'X' or 'features' "
            f"(found arrays: {sorted(arrays)})"
        )
    features = arrays[key]
    if features.dtype.kind not in "biuf" or features.ndim < 2:
        raise SourceError(
            f"{origin}: features must be numeric with shape (N, ...); got {features.dtype} "
            f"{features.shape}"
        )
    n = features.shape[0]
    for name in ("y", "labels", "ids"):
        if name in arrays and arrays[name].shape != (n,):
            raise SourceError(
                f"{origin}: {name!r} must have shape ({n},); got {arrays[name].shape}"
            )
    features = features.astype(np.float32)
    if "feature_names" in arrays:
        feature_names = tuple(str(v) for v in arrays["feature_names"].tolist())
    else:
        feature_names = _default_feature_names(features.shape[1:])
        if schema is not None and list(features.shape[1:]) == schema.feature_shape:
            feature_names = tuple(schema.feature_names)  # unnamed, in the dataset's layout
    if features.ndim == 2 and len(feature_names) == features.shape[1]:
        features, feature_names = fit_layout(
            features, feature_names, schema, origin=origin, target=target, label_column="y"
        )
    label_key = next((k for k in ("y", "labels") if k in arrays), None)
    labels, label_names, label_text = None, None, None
    if label_key is not None and label_column is not None:
        labels, label_names, label_text = _labels(
            arrays[label_key], origin=origin, column=label_key
        )
        if label_names is None and arrays.get("label_names", np.zeros(0)).size:
            label_names = tuple(str(v) for v in arrays["label_names"].tolist())
    if "ids" in arrays and id_column is not None:
        ids = _ids(arrays["ids"], origin=origin, column="ids")
    else:
        ids = content_ids(features, label_text)
    try:
        return RecordSet(
            ids=ids,
            features=features,
            labels=labels,
            feature_names=feature_names,
            label_names=label_names,
        )
    except ValueError as exc:
        raise SourceError(f"{origin}: {exc}") from exc


def _default_feature_names(shape: tuple[int, ...]) -> tuple[str, ...]:
    if len(shape) == 1:
        return tuple(f"f{i}" for i in range(shape[0]))
    return tuple("f_" + "_".join(map(str, idx)) for idx in np.ndindex(*shape))


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


@register_source("sklearn:digits")
def load_digits() -> RecordSet:
    """1797 handwritten digits, 8x8 pixels valued 0..16, labels 0..9 (ships with scikit-learn)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    return RecordSet(
        ids=np.array([f"digits-{i:05d}" for i in range(images.shape[0])], dtype=np.str_),
        features=images,
        labels=np.asarray(bunch.target, dtype=np.int64),
        feature_names=tuple(f"px_{r}_{c}" for r in range(8) for c in range(8)),
        label_names=tuple(str(d) for d in range(10)),
    )


def _sklearn_table(loader_name: str, prefix: str) -> Loader:
    def load() -> RecordSet:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)()
        data = np.asarray(bunch.data, dtype=np.float32)
        return RecordSet(
            ids=np.array([f"{prefix}-{i:05d}" for i in range(data.shape[0])], dtype=np.str_),
            features=data,
            labels=np.asarray(bunch.target, dtype=np.int64),
            feature_names=tuple(_snake(n) for n in bunch.feature_names),
            label_names=tuple(str(n) for n in bunch.target_names),
        )

    load.__doc__ = f"scikit-learn's bundled {loader_name.removeprefix('load_')} dataset."
    return load


for _name in ("iris", "wine", "breast_cancer"):
    register_source(f"sklearn:{_name.replace('_', '-')}")(
        _sklearn_table(f"load_{_name}", _name.replace("_", "-"))
    )


def make_vibration(
    *,
    n_windows: int = 2000,
    window: int = 64,
    seed: int = VIBRATION_SEED,
    faulty: bool = False,
    id_prefix: str = "vib",
) -> RecordSet:
    """Deterministic 3-axis accelerometer windows ``(3, window)`` from a rotating machine.

    Healthy windows: a shaft tone (with a 2nd harmonic) whose speed varies per window, axis
    gains, gravity on ``az`` and sensor noise. ``faulty=True`` adds a bearing defect: periodic
    impulses ringing at a high resonance, the kind of window an autoencoder should flag.
    """
    if n_windows < 1 or window < 8:
        raise ValueError("need n_windows >= 1 and window >= 8")
    rng = np.random.default_rng(seed)
    t = np.arange(window, dtype=np.float64)[None, None, :]
    freq = rng.uniform(0.04, 0.09, size=(n_windows, 1, 1))  # cycles per sample
    phase = rng.uniform(0.0, 2 * math.pi, size=(n_windows, 3, 1))
    gain = np.array([1.0, 0.8, 0.5])[None, :, None] * rng.normal(1.0, 0.05, (n_windows, 3, 1))
    angle = 2 * math.pi * freq * t + phase
    signal = gain * (np.sin(angle) + 0.3 * np.sin(2 * angle + 0.5))
    signal[:, 2, :] += 1.0  # gravity on the vertical axis
    signal += rng.normal(0.0, 0.05, size=signal.shape)
    if faulty:
        period = 1.0 / (3.2 * freq)  # bearing outer-race defect frequency
        since = np.mod(t + rng.uniform(0, 20, (n_windows, 1, 1)), period)
        ringing = np.exp(-since / 3.0) * np.sin(2 * math.pi * 0.35 * since)
        signal += 1.5 * np.array([1.0, 0.6, 0.3])[None, :, None] * ringing
    return RecordSet(
        ids=np.array([f"{id_prefix}-{i:05d}" for i in range(n_windows)], dtype=np.str_),
        features=signal.astype(np.float32),
        labels=None,
        feature_names=tuple(f"{axis}_t{i:02d}" for axis in VIBRATION_AXES for i in range(window)),
    )


@register_source("synthetic:vibration")
def load_vibration() -> RecordSet:
    """2000 healthy 3x64 vibration windows, unlabelled (for an anomaly-detection autoencoder)."""
    return make_vibration()


@register_source("synthetic:vibration-faulty")
def load_vibration_faulty() -> RecordSet:
    """200 windows from a machine with a bearing defect (ids ``vibfault-00000``..)."""
    return make_vibration(n_windows=200, seed=VIBRATION_SEED + 1, faulty=True, id_prefix="vibfault")
