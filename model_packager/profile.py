"""The reference profile a bundle carries for drift detection (numpy only).

Computed by the packager on held-out data: per input feature, quantile bin edges with the
reference counts; for the output, what the model said on the reference rows: class counts, a
top-1 confidence histogram and their joint table (per predicted class, its rows' confidence
histogram: the dependence a row bootstrap of the outputs keeps) for classifiers, or a
histogram of the anomaly score (reconstruction models). Agents sketch
their live windows over the same edges (:func:`histogram`), so the hub compares like with
like. The histogram rule matches docs/PROTOCOL.md: ``n`` ascending edges, ``n + 1`` counts,
``counts[i]`` = values with ``edges[i-1] <= x < edges[i]``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

FORMAT = "edgeloop.profile/1"
CONFIDENCE_EDGES = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class Histogram(BaseModel):
    model_config = ConfigDict(frozen=True)

    edges: list[float]
    counts: list[int]


class FeatureProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    index: int
    edges: list[float]
    counts: list[int]
    mean: float
    std: float
    min: float
    max: float


class OutputProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["classes", "score"]
    class_counts: list[int] = Field(default_factory=list)
    confidence: Histogram | None = None
    # classifiers: class_confidence[k][b] = reference rows predicted k with confidence in bin b
    # (rows sum to class_counts, columns to confidence.counts); empty in older profiles
    class_confidence: list[list[int]] = Field(default_factory=list)
    score: Histogram | None = None  # reconstruction models: per-record mean squared error
    score_quantiles: dict[str, float] = Field(default_factory=dict)


class ReferenceProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: str = FORMAT
    num_samples: int
    split: str
    features: list[FeatureProfile]
    output: OutputProfile


def histogram(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Counts of finite ``values`` over ``edges`` (n edges -> n + 1 counts)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    e = np.asarray(edges, dtype=np.float64)
    x = x[np.isfinite(x)]
    return np.bincount(np.searchsorted(e, x, side="right"), minlength=len(e) + 1).astype(np.int64)


def quantile_edges(values: npt.ArrayLike, *, bins: int) -> list[float]:
    """Up to ``bins - 1`` distinct inner edges at the quantiles of ``values``."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return []
    qs = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(qs)
    if edges.size == 0 or (edges.size == 1 and edges[0] == x.min()):
        # constant feature: one edge just above the value separates "same" from "higher"
        return [float(np.nextafter(x.max(), np.inf))]
    return [float(v) for v in edges]


def softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def reconstruction_error(
    outputs: npt.NDArray[np.floating], inputs: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    diff = outputs.astype(np.float64) - inputs.astype(np.float64)
    return np.asarray((diff**2).reshape(len(diff), -1).mean(axis=1))


def build_profile(
    *,
    raw_inputs: npt.NDArray[np.floating],
    model_inputs: npt.NDArray[np.floating],
    outputs: npt.NDArray[np.floating],
    task: Literal["classification", "reconstruction"],
    feature_names: list[str] | tuple[str, ...],
    split: str,
    bins: int = 10,
    like: ReferenceProfile | None = None,
) -> ReferenceProfile:
    """The profile of ``raw_inputs`` (as a device sees them) and the model's ``outputs``.

    ``like``: bin with that profile's edges (features, and the score histogram of a
    reconstruction model) instead of this data's quantiles, so windows binned for ``like`` (as
    devices bin their telemetry) can be compared with this profile too."""
    flat = raw_inputs.reshape(len(raw_inputs), -1).astype(np.float64)
    if flat.shape[1] != len(feature_names):
        raise ValueError(f"{flat.shape[1]} features but {len(feature_names)} feature names")
    features = []
    for index, name in enumerate(feature_names):
        column = flat[:, index]
        edges = (
            list(like.features[index].edges)
            if like is not None
            else quantile_edges(column, bins=bins)
        )
        features.append(
            FeatureProfile(
                name=name,
                index=index,
                edges=edges,
                counts=histogram(column, edges).tolist(),
                mean=float(column.mean()),
                std=float(column.std()),
                min=float(column.min()),
                max=float(column.max()),
            )
        )
    if task == "classification":
        probs = softmax(outputs)
        confidence = probs.max(axis=1)
        predicted = probs.argmax(axis=1)
        finite = np.isfinite(confidence)  # as ``histogram`` counts them
        conf_bins = np.searchsorted(CONFIDENCE_EDGES, confidence[finite], side="right")
        joint = np.zeros((probs.shape[1], len(CONFIDENCE_EDGES) + 1), np.int64)
        np.add.at(joint, (predicted[finite], conf_bins), 1)
        output = OutputProfile(
            kind="classes",
            class_counts=np.bincount(predicted, minlength=probs.shape[1]).tolist(),
            confidence=Histogram(
                edges=CONFIDENCE_EDGES, counts=histogram(confidence, CONFIDENCE_EDGES).tolist()
            ),
            class_confidence=joint.tolist(),
        )
    else:
        score = reconstruction_error(outputs, model_inputs)
        edges = (
            list(like.output.score.edges)
            if like is not None and like.output.score is not None
            else quantile_edges(score, bins=bins)
        )
        output = OutputProfile(
            kind="score",
            score=Histogram(edges=edges, counts=histogram(score, edges).tolist()),
            score_quantiles={f"p{q}": float(np.quantile(score, q / 100)) for q in (50, 90, 95, 99)},
        )
    return ReferenceProfile(
        num_samples=len(raw_inputs), split=split, features=features, output=output
    )
