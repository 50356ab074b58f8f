"""Package a registry model version into a signed bundle and register it.

Export to ONNX (parity-checked against torch), int8 static quantization behind the accuracy
gate (with the float-fallback remedy), TFLite fp32 + int8 when the ``tflite`` extra is
installed, per-variant measurements with the real runtimes, the reference profile for
drift detection, self-test samples for the device's health check, and lineage.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hub.core.artifacts import ArtifactStore
from hub.core.db import session_scope
from hub.core.errors import InvalidInput
from hub.datasets import service as datasets
from hub.datasets.records import RecordSet
from hub.registry import models as registry
from hub.registry import tracking
from hub.specs import ModelSpec
from hub.tables import Bundle
from hub.tables.devices import Device
from hub.tables.fleet import FieldSample
from hub.training.artifact import load_model
from model_packager import bundle as bundle_format
from model_packager import tflite
from model_packager.gate import (
    AccuracyGateError,
    Metric,
    accuracy_metric,
    evaluate_onnx,
    kernel_deviation,
    quantize_with_gate,
    reconstruction_errors,
    reconstruction_metric_factory,
    require_gate,
)
from model_packager.litert import TFLiteRunner
from model_packager.onnx_export import check_parity, export_onnx
from model_packager.preprocess import Preprocess
from model_packager.profile import build_profile
from model_packager.quantize import weight_range
from model_packager.variants import measure_variant

FORMATS = ("onnx", "tflite")
SELF_TEST_SIZE = 16
REFERENCE_SAMPLE_SIZE = 300
FLEET_SCOPE = "fleet"
FIELD_REFERENCE_PER_DEVICE = 60  # each device's newest field inputs
FIELD_REFERENCE_MIN_ROWS = 200  # fewer: the scope falls back to its parent's reference


def recent_field_inputs(
    session: Session, *, model: str, per_device: int, min_rows: int = 0
) -> dict[str, npt.NDArray[np.float32]]:
    """The newest field inputs (telemetry reservoir samples) of each device that served
    ``model``, flattened, per ``group:<name>`` and for the whole fleet (``"fleet"``): each
    device's newest ``per_device``, or more in a group of few devices, so that the group
    reaches ``min_rows`` (its devices alike). What a retrained model is monitored against: the
    field as it is now, not the dataset's history (which still holds the pre-drift regime)."""
    cap = max(per_device, min_rows)
    newest = (
        select(
            FieldSample.device_id,
            FieldSample.values,
            func.row_number()
            .over(partition_by=FieldSample.device_id, order_by=col(FieldSample.id).desc())
            .label("rank"),
        )
        .where(FieldSample.model == model)
        .subquery()
    )
    rows = session.execute(
        sa_select(newest.c.device_id, newest.c["values"], col(Device.group), newest.c.rank)
        .join(Device, col(Device.id) == newest.c.device_id, isouter=True)
        .where(newest.c.rank <= cap)
    ).all()
    width = max((len(v) for _, v, _, _ in rows if isinstance(v, list)), default=0)
    members: dict[str, set[str]] = {}
    for device, _, group, _ in rows:
        members.setdefault(f"group:{group or 'default'}", set()).add(device)
    take = {  # per device, by group: enough for the group to reach min_rows
        scope: max(per_device, -(-min_rows // len(devices))) for scope, devices in members.items()
    }
    by_scope: dict[str, list[list[float]]] = {}
    for _, values, group, rank in rows:
        scope = f"group:{group or 'default'}"
        if not isinstance(values, list) or len(values) != width or rank > take[scope]:
            continue
        by_scope.setdefault(FLEET_SCOPE, []).append(values)
        by_scope.setdefault(scope, []).append(values)
    return {k: np.asarray(v, dtype=np.float32) for k, v in by_scope.items()}


@dataclass(frozen=True, kw_only=True)
class PackageOptions:
    formats: Sequence[str] = FORMATS
    formats_explicit: bool = False  # False: skip TFLite with a note when the extra is missing
    max_accuracy_drop: float = 1.0  # percentage points, int8 vs fp32
    calibration_size: int = 256
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class PackageOutcome:
    bundle: Bundle
    path: Path  # the store's file (a file:// store; see ``uri`` for any other)
    manifest: dict[str, Any]
    variants: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    uri: str = ""  # where the store keeps it: file://... or s3://bucket/key


def _sample(n: int, k: int, *, seed: int) -> npt.NDArray[np.intp]:
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[: min(n, k)])


def package(
    engine: Engine,
    store: ArtifactStore,
    *,
    ref: str,
    signing_key: Ed25519PrivateKey,
    options: PackageOptions | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PackageOutcome:
    opts = options or PackageOptions()
    unknown = set(opts.formats) - set(FORMATS)
    if unknown or not opts.formats:
        raise InvalidInput(f"formats must be among {list(FORMATS)}; got {list(opts.formats)}")
    step = on_step or (lambda _msg: None)
    notes: list[str] = []

    with session_scope(engine) as s:
        version = registry.get_version(s, ref=ref)
        if version.run_id is None:
            raise InvalidInput(f"{ref} has no training run, so no dataset to calibrate on")
        run = tracking.get_run(s, run_id=version.run_id)
        dataset = datasets.get_by_id(s, version_id=run.dataset_version_id)
        splits = {
            name: datasets.load_split(s, store, version=dataset, split=name)
            for name in ("train", "val", "test")
        }
        blob = store.get_bytes(version.artifact_digest)
        model_ref = f"{version.model_name}@{version.version}"
        lineage = {
            "model_version": model_ref,
            "run_id": run.id,
            "dataset_version": dataset.ref,
            "dataset_digest": dataset.digest,
            "code_version": run.code_version,
            "spec": run.spec,
        }
        version_id = version.id
        # a model trained on field data is monitored against what the field sends now
        field_inputs = (
            recent_field_inputs(
                s,
                model=version.model_name,
                per_device=FIELD_REFERENCE_PER_DEVICE,
                min_rows=FIELD_REFERENCE_MIN_ROWS,
            )
            if isinstance(dataset.lineage, dict) and dataset.lineage.get("field")
            else {}
        )

    trained = load_model(blob)
    spec, model, pre = trained.spec, trained.model, trained.preprocess
    input_shape = tuple(pre.input_shape)
    train, test, reference = splits["train"], splits["test"], splits["val"]
    x_cal = pre.apply(train.features[_sample(len(train), opts.calibration_size, seed=opts.seed)])
    x_ref = pre.apply(reference.features)

    step("exporting to ONNX and checking parity with torch")
    onnx_fp32 = export_onnx(model, input_shape=input_shape, opset=18)
    x_test, y_test, metric, metric_name = _evaluation(spec, pre, test, onnx_fp32, x_ref)

    parity = check_parity(
        model,
        onnx_fp32,
        inputs=x_test[:512],
        task="classification" if spec.task == "classification" else "regression",
    )

    step("quantizing to int8 (static, QDQ, per-channel) behind the accuracy gate")
    gate = quantize_with_gate(
        onnx_fp32,
        calibration=x_cal,
        test_inputs=x_test,
        test_targets=y_test,
        metric=metric,
        max_drop_pp=opts.max_accuracy_drop,
        input_name="input",
    )
    require_gate(gate)
    if gate.all_float:
        raise AccuracyGateError(
            f"{ref}: int8 passes the gate only with every node kept in float, which is no "
            "int8 model at all; retrain (e.g. with weight decay or fewer outlier activations) "
            "or raise --max-accuracy-drop",
            result=gate,
        )

    files: dict[str, bytes] = {"model.fp32.onnx": onnx_fp32, "model.int8.onnx": gate.int8_bytes}
    step("measuring the ONNX variants with onnxruntime")
    measure = partial(
        measure_variant, inputs=x_test, targets=y_test, metric=metric, metric_name=metric_name
    )
    variants = [
        measure(onnx_fp32, file="model.fp32.onnx"),
        measure(gate.int8_bytes, file="model.int8.onnx", nodes_kept_float=gate.nodes_kept_float),
    ]
    if "tflite" in opts.formats:
        if tflite.tflite_available():
            step("converting to TFLite (fp32 and full-integer int8) with litert-torch")
            example = x_cal[:1]
            tfl_fp32 = tflite.convert_fp32(model, example_input=example)
            tfl_int8 = tflite.convert_int8(model, example_input=example, calibration=x_cal)
            files["model.fp32.tflite"], files["model.int8.tflite"] = tfl_fp32, tfl_int8
            step("measuring the TFLite variants with the LiteRT interpreter")
            tv = [
                measure(tfl_fp32, file="model.fp32.tflite"),
                measure(tfl_int8, file="model.int8.tflite"),
            ]
            drop = tv[0]["accuracy"] - tv[1]["accuracy"]
            if drop > opts.max_accuracy_drop:
                raise AccuracyGateError(
                    f"TFLite int8 loses {drop:.2f} points of {metric_name} against TFLite fp32 "
                    f"(limit {opts.max_accuracy_drop}); package with --formats onnx, or raise "
                    "--max-accuracy-drop"
                )
            variants += tv
        elif opts.formats_explicit:
            raise tflite.TFLiteUnavailable("the TFLite converter (litert-torch)")
        else:
            notes.append(
                "TFLite variants skipped: the converter (litert-torch) is not installed; "
                f"enable with: {tflite.INSTALL_HINT}"
            )

    fleet_rows = field_inputs.get(FLEET_SCOPE)
    if fleet_rows is not None and len(fleet_rows) >= FIELD_REFERENCE_MIN_ROWS:
        step("profiling the field's newest inputs (the model was trained on field data)")
        ref_raw, ref_split = fleet_rows.reshape(len(fleet_rows), *train.feature_shape), "field"
    else:
        step("profiling the reference split and writing the signed bundle")
        ref_raw, ref_split = reference.features, "val"
    x_ref = pre.apply(ref_raw)
    ref_out = evaluate_onnx(onnx_fp32, inputs=x_ref)
    profile = build_profile(
        raw_inputs=ref_raw,
        model_inputs=x_ref,
        outputs=ref_out,
        task=spec.task,
        feature_names=reference.feature_names,
        split=ref_split,
    )
    scope_profiles: dict[str, dict[str, Any]] = {}
    scope_samples: dict[str, npt.NDArray[np.float32]] = {}
    for scope, rows in sorted(field_inputs.items()):
        if scope == FLEET_SCOPE or len(rows) < FIELD_REFERENCE_MIN_ROWS:
            continue
        raw = rows.reshape(len(rows), *train.feature_shape)
        x_scope = pre.apply(raw)
        key = f"reference:{scope}"
        scope_profiles[scope] = {
            "profile": build_profile(
                raw_inputs=raw,
                model_inputs=x_scope,
                outputs=evaluate_onnx(onnx_fp32, inputs=x_scope),
                task=spec.task,
                feature_names=reference.feature_names,
                split="field",
                like=profile,
            ).model_dump(mode="json"),
            "samples": key,
        }
        scope_samples[key] = raw[_sample(len(raw), REFERENCE_SAMPLE_SIZE, seed=opts.seed)]
    self_test = test.features[:SELF_TEST_SIZE]
    sample = ref_raw[_sample(len(ref_raw), REFERENCE_SAMPLE_SIZE, seed=opts.seed)]
    files["samples.npz"] = _samples_npz(
        self_test=self_test,
        expected={
            v["file"]: _outputs(files[v["file"]], pre.apply(self_test), v["format"])
            for v in variants
        },
        reference=sample,
        extra=scope_samples,
    )
    manifest = {
        "name": model_ref.split("@")[0],
        "version": model_ref.split("@")[1],
        "model": model_ref,
        "task": spec.task,
        "input": {
            "name": "input",
            "dtype": "float32",
            "shape": list(input_shape),
            "raw_shape": list(train.feature_shape),
            "preprocess": pre.model_dump(mode="json"),
            "feature_names": list(train.feature_names),
        },
        "output": {
            "name": "output",
            "kind": "logits" if spec.task == "classification" else "reconstruction",
            "labels": trained.labels,
        },
        "variants": variants,
        "quantization": {
            "method": "static",
            "format": "QDQ",
            "weights": "int8 per-channel symmetric, 7-bit range (reduce_range)",
            "activations": "int8",
            # <= 64: no CPU's int8 kernels saturate (model_packager.quantize)
            "weight_range": weight_range(gate.int8_bytes),
            # the packaging hub's fused kernels against the model's QDQ arithmetic
            "kernel_max_abs_diff": round(kernel_deviation(gate.int8_bytes, inputs=x_test[:512]), 6),
            "calibration_samples": len(x_cal),
            "calibration_split": "train",
            "nodes_kept_float": gate.nodes_kept_float,
            "fp32_metric": gate.fp32_metric,
            "int8_metric": gate.int8_metric,
            "drop_pp": gate.drop_pp,
            "max_drop_pp": opts.max_accuracy_drop,
        },
        "parity": {
            "max_abs_diff": parity.max_abs_diff,
            "argmax_agreement": parity.argmax_agreement,
        },
        "metric": metric_name,
        "self_test": {"file": "samples.npz", "inputs": "self_test", "atol": 1e-3, "int8_atol": 0.5},
        "latency_budget_ms": max(50.0, 20 * max(v["latency_ms_b1"] for v in variants)),
        "reference_profile": profile.model_dump(mode="json"),
        # per group where the field's newest data support one (hub-side monitoring only)
        "scope_profiles": scope_profiles,
        "lineage": lineage,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.zip"
        info = bundle_format.write_bundle(
            path, manifest=manifest, files=files, signing_key=signing_key
        )
        stored = store.put_file(path)
    with session_scope(engine) as s:
        mv = registry.get_version(s, ref=model_ref)
        assert mv.id == version_id
        row = registry.register_bundle(
            s,
            model_version=mv,
            digest=stored.digest,
            size=stored.size,
            formats=sorted({v["format"] for v in variants}),
            manifest=info.manifest,
        )
    return PackageOutcome(
        bundle=row,
        path=Path(stored.uri.removeprefix("file://")),
        manifest=info.manifest,
        variants=variants,
        notes=notes,
        uri=stored.uri,
    )


def _evaluation(
    spec: ModelSpec,
    pre: Preprocess,
    test: RecordSet,
    onnx_fp32: bytes,
    x_ref: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], np.ndarray | None, Metric, str]:
    """Test inputs, targets and the gate metric (percentage points, higher is better).

    Classifiers: accuracy on the test split. Reconstruction models: the % of windows whose
    anomaly flag is right, at the threshold the device would use (the fp32 model's 99th
    percentile error on the reference split), on the test split plus the spec's anomaly
    examples when it has some.
    """
    x_test = pre.apply(test.features)
    if spec.task == "classification":
        return x_test, spec.targets(test), accuracy_metric, "accuracy"
    threshold = float(
        np.quantile(reconstruction_errors(evaluate_onnx(onnx_fp32, inputs=x_ref), x_ref), 0.99)
    )
    anomalies = spec.anomaly_examples()
    labels = np.zeros(len(x_test), dtype=bool)
    if anomalies is not None:
        x_test = np.concatenate([x_test, pre.apply(anomalies.features)])
        labels = np.concatenate([labels, np.ones(len(anomalies), dtype=bool)])
    metric = reconstruction_metric_factory(threshold=threshold, labels=labels)
    return x_test, x_test, metric, "anomaly_decision_accuracy"


def _outputs(
    model_bytes: bytes, inputs: npt.NDArray[np.float32], fmt: str
) -> npt.NDArray[np.float32]:
    if fmt == "onnx":
        return evaluate_onnx(model_bytes, inputs=inputs)
    return TFLiteRunner(model_bytes).run(inputs)


def _samples_npz(
    *,
    self_test: npt.NDArray[np.float32],
    expected: dict[str, npt.NDArray[np.float32]],
    reference: npt.NDArray[np.float32],
    extra: dict[str, npt.NDArray[np.float32]] | None = None,
) -> bytes:
    """Self-test inputs (raw) with each variant's expected outputs, and a reference sample
    (plus one per monitored scope that has its own reference)."""
    buffer = io.BytesIO()
    arrays = {"self_test": self_test, "reference": reference, **(extra or {})}
    arrays.update({f"expected:{name}": out for name, out in expected.items()})
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def outcome_json(outcome: PackageOutcome) -> dict[str, Any]:
    """The CLI contract's keys for ``edgeloop package``."""
    return {
        # the file's path in a folder store, else the object's URI (s3://bucket/key)
        "bundle": str(outcome.path)
        if not outcome.uri or outcome.uri.startswith("file://")
        else outcome.uri,
        "digest": outcome.bundle.digest,
        "size_bytes": outcome.bundle.size,
        "model": outcome.manifest["model"],
        "variants": outcome.variants,
        "metric": f"test_{outcome.manifest['metric']}",  # what each variant's accuracy is
        "quantization": outcome.manifest["quantization"],
        "notes": outcome.notes,
    }
