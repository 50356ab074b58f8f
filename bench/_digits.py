"""A digits model registered in a hub database the way the packager would leave it: a
ridge-regression linear classifier over sklearn's 1,797 digits, a signed bundle with
reference rows, and a manifest carrying the reference profile (so every drift detector,
MMD included, has what it needs). Shared by ``bench-monitor`` and ``bench-fleet``."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

MODEL, VERSION = "digits-bench", "1"


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def classifier(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A ridge least-squares linear classifier: weights (65, 10) on [x, 1]."""
    a = np.hstack([x / 16.0, np.ones((len(x), 1))])
    target = np.eye(10)[y] * 4.0 - 2.0
    return np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ target)


def logits(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.hstack([x / 16.0, np.ones((len(x), 1))]) @ w


@dataclass(frozen=True)
class Registered:
    """What a telemetry writer needs of the registered version."""

    weights: np.ndarray
    profile: dict[str, Any]
    edges: list[np.ndarray]  # per feature, the profile's histogram edges
    digest: str  # the bundle's


def register(
    engine: Engine, *, artifacts: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray
) -> Registered:
    """Train on the ``reference`` rows, register ``MODEL@VERSION`` with its bundle; the
    artifact store is the content-addressed folder ``artifacts`` (the hub's)."""
    from hub.core.artifacts import FileArtifactStore
    from hub.core.db import session_scope
    from hub.tables import Bundle, ModelVersion, RegisteredModel
    from model_packager.bundle import write_bundle
    from model_packager.profile import build_profile
    from model_packager.signing import generate_private_key

    w = classifier(x[reference], y[reference])
    ref = x[reference]
    profile = build_profile(
        raw_inputs=ref,
        model_inputs=ref,
        outputs=logits(w, ref),
        task="classification",
        feature_names=[f"pixel{i}" for i in range(64)],
        split="val",
    ).model_dump(mode="json")
    store = FileArtifactStore(root=artifacts)
    buffer = io.BytesIO()
    np.savez(buffer, self_test=ref[:4].astype(np.float32), reference=ref.astype(np.float32))
    path = artifacts.parent / "bench-bundle.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bundle(
        path,
        manifest={"name": MODEL, "version": VERSION},
        files={"samples.npz": buffer.getvalue()},
        signing_key=generate_private_key(),
    )
    digest = store.put_file(path).digest
    path.unlink()
    manifest = {
        "name": MODEL,
        "version": VERSION,
        "metric": "accuracy",
        "variants": [{"format": "onnx", "precision": "fp32", "accuracy": 95.0}],
        "reference_profile": profile,
    }
    with session_scope(engine) as s:
        s.add(RegisteredModel(name=MODEL))
        s.flush()
        mv = ModelVersion(
            model_name=MODEL,
            version=int(VERSION),
            artifact_digest="sha256:" + "cd" * 32,
            artifact_size=1,
        )
        s.add(mv)
        s.flush()
        s.add(
            Bundle(
                model_version_id=mv.id or 0,
                digest=digest,
                size=1,
                formats=["onnx"],
                manifest=manifest,
            )
        )
    edges = [np.asarray(f["edges"], np.float64) for f in profile["features"]]
    return Registered(weights=w, profile=profile, edges=edges, digest=digest)


def sketch(
    reg: Registered, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """The sketch of windows of predictions: ``x`` is (windows, predictions, 64); returns
    per window the predicted classes' counts (windows, 10), the confidence histogram, the
    per-feature histograms (one (windows, bins) array per feature), and each prediction's
    class (windows, predictions)."""
    from model_packager.profile import CONFIDENCE_EDGES, softmax

    n, per = x.shape[0], x.shape[1]
    flat = x.reshape(-1, 64)
    probs = softmax(logits(reg.weights, flat))
    top = probs.argmax(axis=1).reshape(n, per)
    rows = np.repeat(np.arange(n), per)
    conf_bins = np.searchsorted(CONFIDENCE_EDGES, probs.max(axis=1), side="right")
    per_feature = []
    for j, e in enumerate(reg.edges):
        b = np.searchsorted(e, x[:, :, j], side="right")
        counts = np.zeros((n, len(e) + 1), np.int64)
        np.add.at(counts, (rows, b.ravel()), 1)
        per_feature.append(counts)
    classes = np.zeros((n, 10), np.int64)
    np.add.at(classes, (rows, top.ravel()), 1)
    confidence = np.zeros((n, len(CONFIDENCE_EDGES) + 1), np.int64)
    np.add.at(confidence, (rows, conf_bins), 1)
    return classes, confidence, per_feature, top
