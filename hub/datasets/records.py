"""A dataset version's records: ids, features and optional class labels, content-addressed.

A :class:`RecordSet` is immutable. Its :meth:`RecordSet.manifest_digest` names the *set* of
records (order does not matter) and is what a dataset version is keyed by; its
:meth:`RecordSet.to_npz_bytes` blob is byte-for-byte deterministic, so storing the same
records twice in a content-addressed store stores them once.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

FORMAT = "edgeloop.recordset/1"
SAMPLE_SIZE = 5  # how many example ids a diff or an error message names
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: identical records give identical bytes


class RecordDiff(BaseModel):
    """What changed between a parent version and this one (by record id)."""

    model_config = ConfigDict(frozen=True)

    added: int
    removed: int
    changed: int
    unchanged: int
    added_sample: list[str]
    removed_sample: list[str]
    changed_sample: list[str]
    schema_changed: bool = False

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.schema_changed)


def _sample(ids: Iterable[str]) -> list[str]:
    return sorted(ids)[:SAMPLE_SIZE]


def _names(value: Sequence[str] | None, *, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(f"{what} must be a sequence of strings, not a single string")
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"{what} must be non-empty strings; got {bad[:SAMPLE_SIZE]!r}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{what} must be unique; repeated: {dupes[:SAMPLE_SIZE]}")
    return names


def _readonly(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    view = array.view()
    view.setflags(write=False)
    return view


@dataclass(frozen=True, eq=False, kw_only=True)
class RecordSet:
    """``N`` records: unique string ids, float32 features ``(N, *feature_shape)``, int64 labels.

    Equality compares content (the manifest digest), ignoring record order.
    """

    ids: npt.NDArray[np.str_]
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64] | None = None
    feature_names: tuple[str, ...]
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        ids = np.asarray(self.ids)
        if ids.size == 0 or (
            ids.dtype.kind == "O" and all(isinstance(i, str) for i in ids.ravel())
        ):
            ids = ids.astype(np.str_)
        if ids.dtype.kind != "U" or ids.ndim != 1:
            raise ValueError(
                f"ids must be a 1-D array of strings; got dtype {ids.dtype}, shape {ids.shape}"
            )
        empty = np.flatnonzero(np.char.str_len(ids) == 0)
        if empty.size:
            raise ValueError(f"ids must be non-empty strings; record(s) {empty[:5].tolist()}")
        if any("\x00" in i for i in ids.tolist()):
            raise ValueError("ids must not contain NUL characters")
        uniq, counts = np.unique(ids, return_counts=True)
        if uniq.size != ids.size:
            dupes = uniq[counts > 1][:SAMPLE_SIZE].tolist()
            raise ValueError(f"ids must be unique; repeated: {dupes}")

        features = np.asarray(self.features)
        if features.dtype.kind not in "biuf":
            raise ValueError(f"features must be numeric (float32); got dtype {features.dtype}")
        if features.ndim < 2:
            raise ValueError(f"features must have shape (N, *feature_shape); got {features.shape}")
        if features.shape[0] != ids.shape[0]:
            raise ValueError(
                f"features have {features.shape[0]} rows but there are {ids.shape[0]} ids"
            )
        features = np.ascontiguousarray(features, dtype=np.float32)

        labels = None
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.dtype.kind not in "iu":
                raise ValueError(
                    f"labels must be integer class labels; got dtype {labels.dtype} "
                    "(convert with .astype(np.int64), or pass labels=None for unlabelled data)"
                )
            if labels.shape != ids.shape:
                raise ValueError(f"labels must have shape ({ids.size},); got {labels.shape}")
            if labels.size and labels.min() < 0:
                raise ValueError(f"labels must be non-negative class indices; min {labels.min()}")
            labels = np.ascontiguousarray(labels, dtype=np.int64)

        feature_names = _names(self.feature_names, what="feature_names")
        assert feature_names is not None
        n_flat = math.prod(features.shape[1:])
        if len(feature_names) != n_flat:
            raise ValueError(
                f"need one feature name per flattened feature ({n_flat} for shape "
                f"{features.shape[1:]}); got {len(feature_names)}"
            )
        label_names = _names(self.label_names, what="label_names")
        if label_names is not None:
            if labels is None:
                raise ValueError("label_names given but labels is None")
            if labels.size and labels.max() >= len(label_names):
                raise ValueError(
                    f"label {labels.max()} has no name: label_names has {len(label_names)} entries"
                )
        set_(self, "ids", _readonly(ids))
        set_(self, "features", _readonly(features))
        set_(self, "labels", None if labels is None else _readonly(labels))
        set_(self, "feature_names", feature_names)
        set_(self, "label_names", label_names)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        kind = "labelled" if self.labels is not None else "unlabelled"
        return f"RecordSet({len(self)} records, feature_shape={self.feature_shape}, {kind})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordSet):
            return NotImplemented
        return self.manifest_digest() == other.manifest_digest()

    def __hash__(self) -> int:
        return hash(self.manifest_digest())

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.features.shape[1:])

    @property
    def num_features(self) -> int:
        return math.prod(self.feature_shape)

    def flat_features(self) -> npt.NDArray[np.float32]:
        """Features as ``(N, num_features)``."""
        return self.features.reshape(len(self), self.num_features)

    def schema_key(self) -> dict[str, Any]:
        """What two record sets must share to be merged or compared."""
        return {
            "feature_shape": list(self.feature_shape),
            "feature_dtype": "<f4",
            "label_dtype": None if self.labels is None else "<i8",
            "feature_names": list(self.feature_names),
            "label_names": None if self.label_names is None else list(self.label_names),
        }

    @cached_property
    def _digests(self) -> npt.NDArray[np.str_]:
        flat = np.ascontiguousarray(self.flat_features(), dtype="<f4")
        labels = None if self.labels is None else self.labels.astype("<i8")
        out = []
        for i, record_id in enumerate(self.ids.tolist()):
            raw = record_id.encode("utf-8")
            h = hashlib.sha256(len(raw).to_bytes(8, "little"))
            h.update(raw)
            h.update(flat[i].tobytes())
            h.update(b"\x00" if labels is None else b"\x01" + labels[i].tobytes())
            out.append(h.hexdigest())
        return _readonly(np.array(out, dtype="<U64"))

    def record_digests(self) -> npt.NDArray[np.str_]:
        """sha256 hex per record over (id, little-endian float32 features, int64 label)."""
        return self._digests

    def manifest_digest(self) -> str:
        """``sha256:<hex>`` naming this set of records; the same records in any order match."""
        return self._manifest

    @cached_property
    def _manifest(self) -> str:
        header = {"format": FORMAT, "count": len(self), **self.schema_key()}
        h = hashlib.sha256(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
        order = np.argsort(self.ids, kind="stable")
        for record_id, digest in zip(
            self.ids[order].tolist(), self._digests[order].tolist(), strict=True
        ):
            h.update(f"{record_id}\x00{digest}\n".encode())
        return "sha256:" + h.hexdigest()

    def sorted_by_id(self) -> RecordSet:
        order = np.argsort(self.ids, kind="stable")
        return self._take(order)

    def _take(self, index: npt.NDArray[np.intp]) -> RecordSet:
        return RecordSet(
            ids=self.ids[index],
            features=self.features[index],
            labels=None if self.labels is None else self.labels[index],
            feature_names=self.feature_names,
            label_names=self.label_names,
        )

    def to_npz_bytes(self) -> bytes:
        """A deterministic ``.npz`` (uncompressed zip, fixed timestamps, records sorted by id)."""
        rs = self.sorted_by_id()
        arrays: dict[str, npt.NDArray[Any]] = {
            "format": _le_text(np.array(FORMAT)),
            "ids": _le_text(rs.ids),
            "features": rs.features.astype("<f4"),
            "feature_names": _le_text(np.array(rs.feature_names, dtype=np.str_)),
        }
        if rs.labels is not None:
            arrays["labels"] = rs.labels.astype("<i8")
        if rs.label_names is not None:
            arrays["label_names"] = _le_text(np.array(rs.label_names, dtype=np.str_))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
            for key, array in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                zf.writestr(info, member.getvalue())
        return buffer.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> RecordSet:
        """Read what :meth:`to_npz_bytes` wrote (no pickle)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"not a record set .npz: {exc}") from exc
        missing = {"ids", "features", "feature_names"} - arrays.keys()
        if missing:
            raise ValueError(f"not a record set .npz: missing arrays {sorted(missing)}")
        label_names = arrays.get("label_names")
        return cls(
            ids=arrays["ids"],
            features=arrays["features"],
            labels=arrays.get("labels"),
            feature_names=tuple(str(n) for n in arrays["feature_names"].tolist()),
            label_names=None
            if label_names is None
            else tuple(str(n) for n in label_names.tolist()),
        )

    def index(self) -> dict[str, int]:
        """id → row."""
        return {record_id: i for i, record_id in enumerate(self.ids.tolist())}

    def _check_schema(self, other: RecordSet, *, action: str) -> None:
        mine, theirs = self.schema_key(), other.schema_key()
        differ = [key for key in mine if mine[key] != theirs[key]]
        if differ:
            details = "; ".join(
                f"{key}: {_short(mine[key])} vs {_short(theirs[key])}" for key in differ
            )
            raise ValueError(f"cannot {action} record sets with different schemas ({details})")

    def merge(self, other: RecordSet) -> RecordSet:
        """This set's records, then ``other``'s new ones. Same id with other content: error."""
        self._check_schema(other, action="merge")
        mine = self.index()
        conflicts: list[str] = []
        new_rows: list[int] = []
        for j, (record_id, digest) in enumerate(
            zip(other.ids.tolist(), other._digests.tolist(), strict=True)
        ):
            i = mine.get(record_id)
            if i is None:
                new_rows.append(j)
            elif self._digests[i] != digest:
                conflicts.append(record_id)
        if conflicts:
            raise ValueError(
                f"cannot merge: {len(conflicts)} record(s) have the same id but different "
                f"content, e.g. {_sample(conflicts)}; give changed records new ids or import "
                "a snapshot instead of appending"
            )
        if not new_rows:
            return self
        added = other._take(np.array(new_rows, dtype=np.intp))
        return RecordSet(
            ids=np.concatenate([self.ids, added.ids]),
            features=np.concatenate([self.features, added.features]),
            labels=None
            if self.labels is None or added.labels is None
            else np.concatenate([self.labels, added.labels]),
            feature_names=self.feature_names,
            label_names=self.label_names,
        )

    def subset(self, mask_or_ids: npt.ArrayLike) -> RecordSet:
        """Records where a boolean mask is true, or the given ids / row positions, in order."""
        selector = np.asarray(mask_or_ids)
        if selector.dtype == np.bool_:
            if selector.shape != (len(self),):
                raise ValueError(f"mask must have shape ({len(self)},); got {selector.shape}")
            return self._take(np.flatnonzero(selector))
        if selector.size == 0:
            return self._take(np.zeros(0, dtype=np.intp))
        if selector.ndim != 1 or selector.dtype.kind not in "iuUO":
            raise ValueError(
                "subset takes a boolean mask, record ids or row positions (1-D); got "
                f"{selector.dtype} with shape {selector.shape}"
            )
        if selector.dtype.kind in "iu":
            rows = selector.astype(np.intp)
            if rows.min() < 0 or rows.max() >= len(self):
                raise ValueError(f"row positions must be in 0..{len(self) - 1}")
            return self._take(rows)
        index = self.index()
        wanted = [str(i) for i in selector.tolist()]
        missing = [i for i in wanted if i not in index]
        if missing:
            raise ValueError(f"{len(missing)} id(s) not in this record set, e.g. {missing[:5]}")
        return self._take(np.array([index[i] for i in wanted], dtype=np.intp))

    def not_in(self, other: RecordSet) -> npt.NDArray[np.bool_]:
        """Mask of the records that ``other`` lacks: new ids, or the same id with other content."""
        theirs = dict(zip(other.ids.tolist(), other._digests.tolist(), strict=True))
        pairs = zip(self.ids.tolist(), self._digests.tolist(), strict=True)
        return np.array([theirs.get(i) != d for i, d in pairs], dtype=np.bool_)

    def diff(self, parent: RecordSet) -> RecordDiff:
        """Added, removed and changed records relative to ``parent`` (matched by id)."""
        theirs = dict(zip(parent.ids.tolist(), parent._digests.tolist(), strict=True))
        added, changed, unchanged = [], [], 0
        for record_id, digest in zip(self.ids.tolist(), self._digests.tolist(), strict=True):
            if record_id not in theirs:
                added.append(record_id)
            elif theirs[record_id] != digest:
                changed.append(record_id)
            else:
                unchanged += 1
        mine = set(self.ids.tolist())
        removed = [i for i in theirs if i not in mine]
        schema_changed = self.schema_key() != parent.schema_key()
        return RecordDiff(
            added=len(added),
            removed=len(removed),
            changed=len(changed),
            unchanged=unchanged,
            added_sample=_sample(added),
            removed_sample=_sample(removed),
            changed_sample=_sample(changed),
            schema_changed=schema_changed,
        )


def _le_text(array: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    """Unicode arrays are UTF-32 in .npy: fix the byte order so every platform writes the same."""
    return array.astype(array.dtype.newbyteorder("<"))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
