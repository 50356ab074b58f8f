"""Packaging: int8 against fp32 for every built-in model, measured in the same run.

Trains each built-in spec with its defaults on a throw-away hub, packages it (ONNX and
TFLite), and compares each int8 variant with its fp32 sibling on the same runtime: size
ratio, accuracy delta (points), batch-1 latency ratio and batch-64 throughput ratio.
Targets (issue: model packager) on digits-cnn ONNX: size <= 0.35x, accuracy drop <= 0.5
points, batch-64 throughput >= 1.3x.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench._result import BenchResult
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.datasets import service as datasets
from hub.packaging.service import package
from hub.tables import create_all
from hub.training.service import train
from model_packager.signing import generate_private_key

MODELS = [
    ("digits-cnn", "sklearn:digits"),
    ("digits-mlp", "sklearn:digits"),
    ("vibration-ae", "synthetic:vibration"),
]


def _compare(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for fmt in ("onnx", "tflite"):
        by = {v["precision"]: v for v in variants if v["format"] == fmt}
        if {"fp32", "int8"} <= set(by):
            fp32, int8 = by["fp32"], by["int8"]
            rows.append(
                {
                    "format": fmt,
                    "size_ratio": round(int8["size_bytes"] / fp32["size_bytes"], 3),
                    "accuracy_fp32": fp32["accuracy"],
                    "accuracy_int8": int8["accuracy"],
                    "accuracy_delta_pp": round(int8["accuracy"] - fp32["accuracy"], 3),
                    "latency_b1_ratio": round(int8["latency_ms_b1"] / fp32["latency_ms_b1"], 3),
                    "throughput_b64_ratio": round(
                        int8["throughput_b64"] / fp32["throughput_b64"], 3
                    ),
                    "metric": fp32["metric"],
                    "nodes_kept_float": int8["nodes_kept_float"],
                }
            )
    return rows


def run() -> BenchResult:
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'hub.db'}")
        create_all(engine)
        store = FileArtifactStore(root=Path(tmp) / "artifacts")
        key = generate_private_key()
        for spec, source in MODELS:
            with session_scope(engine) as s:
                datasets.import_dataset(s, store, name=spec, source=source)
            start = time.perf_counter()
            trained = train(engine, store, spec_name=spec, dataset=f"{spec}@1")
            trained_s = time.perf_counter() - start
            start = time.perf_counter()
            outcome = package(engine, store, ref=f"{spec}@1", signing_key=key)
            details[spec] = {
                "train_s": round(trained_s, 1),
                "package_s": round(time.perf_counter() - start, 1),
                "test_metrics": trained.metrics,
                "bundle_bytes": outcome.bundle.size,
                "comparisons": _compare(outcome.variants),
                "notes": outcome.notes,
            }
        engine.dispose()
    cnn = next(r for r in details["digits-cnn"]["comparisons"] if r["format"] == "onnx")
    met = (
        cnn["size_ratio"] <= 0.35
        and -cnn["accuracy_delta_pp"] <= 0.5
        and cnn["throughput_b64_ratio"] >= 1.3
    )
    for spec, info in details.items():
        for row in info["comparisons"]:
            print(
                f"  {spec:13s} {row['format']:6s} size x{row['size_ratio']:.3f}  "
                f"{row['metric']} {row['accuracy_fp32']:.2f} -> {row['accuracy_int8']:.2f} "
                f"({row['accuracy_delta_pp']:+.2f} pp)  b1 latency x{row['latency_b1_ratio']:.2f}  "
                f"b64 throughput x{row['throughput_b64_ratio']:.2f}"
            )
    return BenchResult(
        name="packaging",
        baseline="fp32 ONNX of the same trained digits-cnn, same runtime, same run",
        ratio=cnn["throughput_b64_ratio"],
        target="digits-cnn int8 ONNX: size <= 0.35x, drop <= 0.5 pp, b64 throughput >= 1.3x",
        met=met,
        details=details,
    )
