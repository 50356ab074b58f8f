"""Train/val/test splits that never move a record: each record's split is a hash of (salt, key).

``u = int.from_bytes(sha256(f"{salt}\\x00{key}")[:8], "big") / 2**64``; the split is the first
name (in the mapping's order) whose cumulative fraction exceeds ``u``. A record's split depends
on nothing but its key and the salt, so it keeps its split when the pool grows or shrinks.

The key is the record id, or the *source* the id names after its last ``#``
(``field:cam-1:p-42#digits-00042``): records drawn from one source (the same digit seen by many
cameras, the same machine recorded twice) share a split, so no model is trained on a source
that its validation or test split also holds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from hub.datasets.records import RecordSet

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
FRACTION_TOLERANCE = 1e-9


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """The fractions as a plain dict, or ValueError saying what is wrong with them."""
    if not isinstance(fractions, Mapping) or not fractions:
        raise ValueError(
            f"split fractions must be a non-empty mapping name → fraction, e.g. "
            f"{DEFAULT_FRACTIONS}; got {fractions!r}"
        )
    out: dict[str, float] = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"split names must be non-empty strings; got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"split {name!r}: fraction must be a number; got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"split {name!r}: fraction must be positive; got {value!r}")
        out[name] = float(value)
    total = math.fsum(out.values())
    if abs(total - 1.0) > FRACTION_TOLERANCE:
        raise ValueError(f"split fractions must sum to 1; {out} sums to {total!r}")
    return out


def _bounds(fractions: Mapping[str, float]) -> tuple[list[str], list[float]]:
    checked = check_fractions(fractions)
    names = list(checked)
    cumulative, running = [], 0.0
    for name in names:
        running += checked[name]
        cumulative.append(running)
    return names, cumulative


SOURCE_MARK = "#"


def split_key(record_id: str) -> str:
    """What decides a record's split: the source named after the id's last ``#``, else the id."""
    _, mark, source = record_id.rpartition(SOURCE_MARK)
    return source if mark and source else record_id


def _unit(record_id: str, salt: str) -> float:
    key = split_key(record_id)
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(u: float, names: list[str], cumulative: list[float]) -> str:
    for name, bound in zip(names, cumulative, strict=True):
        if bound > u:
            return name
    return names[-1]  # rounding: the fractions sum to 1 - epsilon


def _check_salt(salt: str) -> None:
    if not isinstance(salt, str):
        raise ValueError(f"salt must be a string (e.g. the dataset name); got {salt!r}")


def split_of(record_id: str, *, fractions: Mapping[str, float], salt: str) -> str:
    """The split of one record id."""
    _check_salt(salt)
    names, cumulative = _bounds(fractions)
    return _pick(_unit(str(record_id), salt), names, cumulative)


def assign_splits(
    ids: Iterable[str] | npt.NDArray[np.str_], *, fractions: Mapping[str, float], salt: str
) -> npt.NDArray[np.str_]:
    """The split name of every id, in order (a unicode array: ``names == "train"`` is a mask)."""
    _check_salt(salt)
    names, cumulative = _bounds(fractions)
    id_list = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    picked = [_pick(_unit(str(i), salt), names, cumulative) for i in id_list]
    width = max(len(n) for n in names)
    return np.array(picked, dtype=f"<U{width}")


def split_counts(
    ids: Iterable[str] | npt.NDArray[np.str_], *, fractions: Mapping[str, float], salt: str
) -> dict[str, int]:
    """How many ids land in each split (every split named, zeros included, in order)."""
    assigned = assign_splits(ids, fractions=fractions, salt=salt)
    return {name: int(np.count_nonzero(assigned == name)) for name in check_fractions(fractions)}


def split_records(
    records: RecordSet, *, fractions: Mapping[str, float], salt: str
) -> dict[str, RecordSet]:
    """The records of each split, by the same rule."""
    assigned = assign_splits(records.ids, fractions=fractions, salt=salt)
    return {name: records.subset(assigned == name) for name in check_fractions(fractions)}
