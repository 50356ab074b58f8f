"""Synthetic monitoring inputs, written the way the hub's ingest writes them.

A registered model version with a bundle whose manifest carries a real reference profile
(``model_packager.profile.build_profile`` on a Gaussian sample and a linear classifier),
and telemetry rows sketched from fresh samples exactly as the agent does
(``model_packager.profile.histogram`` over the profile's edges).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.engine import Engine

from hub.core.db import session_scope
from hub.tables import Bundle, FeedbackLabelRow, ModelVersion, RegisteredModel, TelemetryWindowRow
from model_packager.profile import CONFIDENCE_EDGES, build_profile, histogram, softmax

FEATURES = 4
CLASSES = 3
WEIGHTS = np.array(
    [[2.0, -1.0, 0.0], [0.0, 2.0, -1.0], [-1.0, 0.0, 2.0], [1.0, 1.0, -2.0]], dtype=np.float64
)


def logits(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(x @ WEIGHTS * 2.0)


@dataclass
class Fleet:
    """One model version in a hub database, and a writer of its telemetry and labels."""

    engine: Engine
    model: str = "sensor-clf"
    version: str = "1"
    digest: str = "sha256:" + "ab" * 32
    accuracy_pct: float = 95.0
    seed: int = 7
    profile: dict[str, Any] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)
    _t0: datetime = field(default_factory=lambda: datetime(2025, 1, 1, tzinfo=UTC))

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def register(self) -> Fleet:
        ref = np.random.default_rng(1).normal(size=(2000, FEATURES))
        profile = build_profile(
            raw_inputs=ref,
            model_inputs=ref,
            outputs=logits(ref),
            task="classification",
            feature_names=[f"f{i}" for i in range(FEATURES)],
            split="val",
        )
        self.profile = profile.model_dump(mode="json")
        manifest = {
            "name": self.model,
            "version": self.version,
            "model": f"{self.model}@{self.version}",
            "metric": "accuracy",
            "variants": [
                {"format": "onnx", "precision": "fp32", "accuracy": self.accuracy_pct + 0.5},
                {"format": "onnx", "precision": "int8", "accuracy": self.accuracy_pct},
            ],
            "reference_profile": self.profile,
        }
        with session_scope(self.engine) as s:
            s.add(RegisteredModel(name=self.model))
            s.flush()
            mv = ModelVersion(
                model_name=self.model,
                version=int(self.version),
                artifact_digest="sha256:" + "cd" * 32,
                artifact_size=1,
            )
            s.add(mv)
            s.flush()
            s.add(
                Bundle(
                    model_version_id=mv.id or 0,
                    digest=self.digest,
                    size=1,
                    formats=["onnx"],
                    manifest=manifest,
                )
            )
        return self

    def sample(self, n: int, *, shift: float = 0.0) -> npt.NDArray[np.float64]:
        x = self.rng.normal(size=(n, FEATURES))
        x[:, :2] += shift  # a covariate shift on two of four features
        return x

    def window_row(
        self, device: str, x: npt.NDArray[np.float64], *, group: str
    ) -> TelemetryWindowRow:
        seq = self._seq[device] = self._seq.get(device, 0) + 1
        probs = softmax(logits(x))
        features = []
        for f in self.profile["features"]:
            col = x[:, f["index"]]
            features.append(
                {
                    "name": f["name"],
                    "index": f["index"],
                    "counts": histogram(col, f["edges"]).tolist(),
                    "min": float(col.min()),
                    "max": float(col.max()),
                    "sum": float(col.sum()),
                    "sum_sq": float((col**2).sum()),
                    "count": len(col),
                    "non_finite": 0,
                }
            )
        start = self._t0 + timedelta(seconds=10 * seq)
        return TelemetryWindowRow(
            device_id=device,
            seq=seq,
            group=group,
            model=self.model,
            version=self.version,
            bundle_digest=self.digest,
            window_start=start,
            window_end=start + timedelta(seconds=10),
            count=len(x),
            latency={"edges": [1.0, 5.0], "counts": [len(x), 0, 0]},
            output_counts=np.bincount(probs.argmax(axis=1), minlength=CLASSES).tolist(),
            confidence={
                "edges": CONFIDENCE_EDGES,
                "counts": histogram(probs.max(axis=1), CONFIDENCE_EDGES).tolist(),
            },
            features=features,
        )

    def telemetry(
        self,
        *,
        devices: dict[str, str],
        windows: int,
        per_window: int,
        shift: float = 0.0,
    ) -> None:
        """``windows`` rows per device (``devices``: id -> group), interleaved like a fleet."""
        with session_scope(self.engine) as s:
            for _ in range(windows):
                for device, group in devices.items():
                    s.add(
                        self.window_row(device, self.sample(per_window, shift=shift), group=group)
                    )

    def labels(self, *, device: str, n: int, accuracy: float) -> None:
        """``n`` labels of which a fraction ``accuracy`` (exactly, shuffled) is correct."""
        correct = np.zeros(n, dtype=bool)
        correct[: round(n * accuracy)] = True
        self.rng.shuffle(correct)
        seq = self._seq[f"fb:{device}"] = self._seq.get(f"fb:{device}", 0) + 1
        with session_scope(self.engine) as s:
            for i, ok in enumerate(correct):
                predicted = int(self.rng.integers(CLASSES))
                s.add(
                    FeedbackLabelRow(
                        device_id=device,
                        seq=seq,
                        prediction_id=f"{device}-{seq}-{i}",
                        label=predicted if ok else (predicted + 1) % CLASSES,
                        predicted_label=predicted,
                        model=self.model,
                        version=self.version,
                        at=self._t0,
                    )
                )
