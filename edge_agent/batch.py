"""Batch prediction: the short-running deployment of a bundle over a file of records.

:func:`predict_batch` verifies the bundle (signature, digests: an unverified bundle is
refused with :class:`~model_packager.bundle.BundleError`), extracts it to a temporary slot,
loads it with :func:`~edge_agent._runtime.load_slot`, checks the self-test (not the latency
budget: a batch job is about throughput) and predicts the records in batches.

Inputs: ``.npz`` with an array ``X`` or ``features`` (``[N, *raw_shape]`` or flat
``[N, features]``, or one record: the rule of :mod:`edge_agent.inputs`) and optionally
``ids``; or ``.csv`` of numeric columns, with an optional header (columns named like the
manifest's ``feature_names`` are picked by name, so a ``dataset export`` table works, and an
``id`` column is kept as the record ids). Outputs: ``.npz`` with ``ids`` (prediction ids),
``outputs``, ``labels`` (classifiers) or ``scores`` (reconstruction models) and
``record_ids`` when the input had them; or ``.csv`` with one row per record.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from edge_agent._predictor import Prediction, Predictor
from edge_agent._runtime import DEFAULT_PREFER, LoadedModel, health_check, load_slot
from edge_agent.errors import BatchError
from edge_agent.inputs import as_records
from model_packager.bundle import PublicKeyLike, open_bundle

__all__ = ["BatchError", "BatchSummary", "predict_batch", "read_records"]

FORMATS = (".npz", ".csv")


@dataclass(frozen=True, kw_only=True)
class BatchSummary:
    records: int
    batches: int
    model: str
    version: str
    variant: str
    bundle_digest: str
    output: Path
    seconds: float
    self_test_max_abs_diff: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else math.inf


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, feature_names: Sequence[str]) -> tuple[np.ndarray, list[str] | None]:
    with path.open(newline="") as fh:
        rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"{path} has no rows")
    header: list[str] | None = None
    if not all(_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    columns = list(range(len(rows[0]) if rows else 0))
    record_ids = None
    if header is not None:
        id_col = next((i for i, name in enumerate(header) if name.lower() == "id"), None)
        if feature_names and set(feature_names) <= set(header):
            columns = [header.index(name) for name in feature_names]
        else:
            columns = [i for i in range(len(header)) if i != id_col]
        if id_col is not None:
            record_ids = [row[id_col] for row in rows]
    try:
        x = np.array([[float(row[i]) for i in columns] for row in rows], dtype=np.float32)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: every row needs {len(columns)} numeric values ({exc})") from exc
    return x.reshape(len(rows), len(columns)), record_ids


def read_records(path: Path, model: LoadedModel) -> tuple[np.ndarray, list[str] | None]:
    """Raw records ``[N, *raw_shape]`` and the record ids (when the file has them)."""
    path = Path(path)
    record_ids: list[str] | None = None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            key = next((k for k in ("X", "features") if k in npz.files), None)
            if key is None:
                raise ValueError(f"{path} has no array 'X' or 'features' (it has {npz.files})")
            x = np.asarray(npz[key])
            if "ids" in npz.files:
                record_ids = [str(i) for i in npz["ids"].tolist()]
    elif path.suffix == ".csv":
        x, record_ids = _read_csv(path, model.manifest["input"].get("feature_names") or [])
    else:
        raise ValueError(f"inputs must be one of {list(FORMATS)}, got {path.name}")
    try:  # the input rule of every predict path: shaped or flat records
        x = as_records(x, tuple(model.preprocess.raw_shape), model=model.ref)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc
    if record_ids is not None and len(record_ids) != len(x):
        raise ValueError(f"{path.name}: {len(record_ids)} ids for {len(x)} records")
    return x, record_ids


def _write_csv(
    fh: TextIO, parts: Iterator[Prediction], record_ids: list[str] | None, kind: str | None
) -> None:
    writer = csv.writer(fh)
    done = 0
    for p in parts:
        n = len(p.ids)
        flat = p.outputs.reshape(n, -1).tolist()
        if not done:
            writer.writerow(
                ["id", *(["record_id"] if record_ids else []), *([kind] if kind else [])]
                + [f"output_{i}" for i in range(len(flat[0]))]
            )
        for i in range(n):
            row: list[object] = [p.ids[i]]
            if record_ids is not None:
                row.append(record_ids[done + i])
            if kind == "label":
                row.append(p.labels[i] if p.labels is not None else "")
            elif kind == "score":
                row.append(repr(float(p.scores[i])) if p.scores is not None else "")
            writer.writerow(row + [repr(v) for v in flat[i]])
        done += n


def _write_npz(fh: BinaryIO, parts: Iterator[Prediction], record_ids: list[str] | None) -> None:
    done = list(parts)
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([i for p in done for i in p.ids], dtype=str),
        "outputs": np.concatenate([p.outputs for p in done]) if done else np.zeros((0,)),
    }
    if done and done[0].labels is not None:
        arrays["labels"] = np.array([label for p in done for label in p.labels or []], dtype=str)
    if done and done[0].scores is not None:
        arrays["scores"] = np.concatenate([p.scores for p in done if p.scores is not None])
    if record_ids is not None:
        arrays["record_ids"] = np.array(record_ids, dtype=str)
    np.savez(fh, allow_pickle=False, **arrays)


def _batches(
    predictor: Predictor,
    x: np.ndarray,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> Iterator[Prediction]:
    total = len(x)
    for begin in range(0, total, batch_size):
        yield predictor.predict(x[begin : begin + batch_size])
        if progress is not None:
            progress(min(begin + batch_size, total), total)


def predict_batch(
    *,
    bundle: Path,
    public_key: PublicKeyLike,
    inputs: Path,
    output: Path,
    prefer: Sequence[str] = DEFAULT_PREFER,
    batch_size: int = 256,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Predict every record of ``inputs`` with the verified ``bundle`` into ``output``.

    ``progress(done, total)`` is called after each batch. The output file appears only
    when complete (written to a temporary file, then renamed).
    """
    output = Path(output)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if output.suffix not in FORMATS:
        raise ValueError(f"output must be one of {list(FORMATS)}, got {output.name}")
    verified = open_bundle(Path(bundle), public_key=public_key)  # raises BundleError
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeloop-batch-") as tmp:
        slot = Path(tmp) / "slot"
        verified.extract_to(slot)
        (slot / "manifest.json").write_bytes(verified.manifest_bytes)
        model = load_slot(slot, prefer=prefer, threads=threads)
        report = health_check(model, check_latency=False)
        if not report.ok:
            raise BatchError(f"{model.ref} ({model.variant_file}) failed: {report.reason}")
        x, record_ids = read_records(Path(inputs), model)
        predictor = Predictor(model=model, device_id="batch")
        parts = _batches(predictor, x, batch_size, progress)
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
        partial = Path(name)
        try:
            if output.suffix == ".csv":
                kind = {"classification": "label", "reconstruction": "score"}.get(model.task)
                with os.fdopen(fd, "w", newline="") as text:
                    _write_csv(text, parts, record_ids, kind)
            else:
                with os.fdopen(fd, "wb") as binary:
                    _write_npz(binary, parts, record_ids)
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    return BatchSummary(
        records=len(x),
        batches=-(-len(x) // batch_size),
        model=model.name,
        version=model.version,
        variant=model.variant_file,
        bundle_digest=verified.digest,
        output=output,
        seconds=time.perf_counter() - start,
        self_test_max_abs_diff=report.max_abs_diff,
    )
