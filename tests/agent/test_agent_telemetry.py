"""Telemetry windows and feedback batches built on the device."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from edge_agent._feedback import FeedbackBuffer
from edge_agent._telemetry import DEFAULT_LATENCY_EDGES_MS, WindowAggregator
from model_packager.profile import (
    CONFIDENCE_EDGES,
    build_profile,
    histogram,
    reconstruction_error,
    softmax,
)
from proto import messages_pb2 as pb

DIGEST = "sha256:" + "ab" * 32
F, C = 12, 5


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_data(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw [n, 3, 4] records (one constant feature, one integer-valued) and logits [n, C]."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, 3, 4)).astype(np.float32)
    raw[:, 0, 0] = 7.0  # constant: a single edge
    raw[:, 2, 3] = rng.integers(0, 3, n)  # few distinct values: fewer edges than bins
    logits = rng.normal(size=(n, C)).astype(np.float32) * 2
    return raw, logits


@pytest.fixture(scope="module")
def cls_profile() -> dict[str, Any]:
    raw, logits = make_data(400, seed=0)
    profile = build_profile(
        raw_inputs=raw,
        model_inputs=raw,
        outputs=logits,
        task="classification",
        feature_names=[f"f{i}" for i in range(F)],
        split="val",
    )
    return profile.model_dump(mode="json")


@pytest.fixture(scope="module")
def rec_profile() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2, 8)).astype(np.float32)
    out = x + rng.normal(scale=0.3, size=x.shape).astype(np.float32)
    profile = build_profile(
        raw_inputs=x,
        model_inputs=x,
        outputs=out,
        task="reconstruction",
        feature_names=[f"s{i}" for i in range(16)],
        split="val",
    )
    return profile.model_dump(mode="json")


def aggregator(profile: dict[str, Any], **kwargs: Any) -> WindowAggregator:
    options: dict[str, Any] = {"task": "classification", "clock": Clock(), "seed": 0}
    options.update(kwargs)
    return WindowAggregator(
        device_id="cam-1",
        model="digits",
        version="3",
        bundle_digest=DIGEST,
        profile=profile,
        **options,
    )


def feed(agg: WindowAggregator, raw: np.ndarray, logits: np.ndarray, sizes: list[int]) -> None:
    start = 0
    for size in sizes:
        part = slice(start, start + size)
        ids = [f"p{i}" for i in range(start, start + size)]
        agg.record(raw=raw[part], outputs=logits[part], latency_ms=1.0, prediction_ids=ids)
        start += size
    assert start == len(raw)


def test_feature_sketches_follow_the_profile_histogram_rule(cls_profile: dict[str, Any]) -> None:
    raw, logits = make_data(120, seed=5)
    raw[3, 1, 2] = 99.0  # beyond the last edge
    raw[4, 1, 2] = -99.0
    agg = aggregator(cls_profile)
    feed(agg, raw, logits, [1, 1, 7, 40, 1, 50, 20])  # small and large batch code paths
    window = agg.close(seq=1)
    flat = raw.reshape(len(raw), -1).astype(np.float64)
    assert window.count == 120 and len(window.features) == F
    for j, (sketch, ref) in enumerate(zip(window.features, cls_profile["features"], strict=True)):
        column = flat[:, j]
        assert sketch.name == ref["name"] and sketch.index == j
        assert list(sketch.counts) == histogram(column, ref["edges"]).tolist()
        assert sum(sketch.counts) == sketch.count == 120 and sketch.non_finite == 0
        assert (sketch.min, sketch.max) == (column.min(), column.max())
        assert sketch.sum == pytest.approx(column.sum())
        assert sketch.sum_sq == pytest.approx((column**2).sum())
    assert len(window.features[0].counts) == 2  # the constant feature: one edge, two counts


def test_non_finite_inputs_are_only_counted_as_non_finite(cls_profile: dict[str, Any]) -> None:
    raw, logits = make_data(40, seed=6)
    raw[0, 0, 1] = np.nan
    raw[1, 0, 1] = np.inf
    raw[2, 0, 1] = -np.inf
    raw[5, :, :] = np.nan  # a whole record
    agg = aggregator(cls_profile)
    feed(agg, raw, logits, [1, 1, 1, 1, 1, 1, 34])
    window = agg.close(seq=1)
    flat = raw.reshape(40, -1).astype(np.float64)
    sketch = window.features[1]
    assert sketch.non_finite == 4 and sketch.count == 36 and sum(sketch.counts) == 36
    finite = flat[:, 1][np.isfinite(flat[:, 1])]
    assert (
        list(sketch.counts) == histogram(flat[:, 1], cls_profile["features"][1]["edges"]).tolist()
    )
    assert (sketch.min, sketch.max) == (finite.min(), finite.max())
    assert sketch.sum == pytest.approx(finite.sum())
    assert [s.non_finite for s in window.features[2:]] == [1] * (F - 2)
    assert window.count == 40


def test_classifier_outputs_and_confidence(cls_profile: dict[str, Any]) -> None:
    raw, logits = make_data(90, seed=7)
    agg = aggregator(cls_profile)
    feed(agg, raw, logits, [1, 29, 60])
    window = agg.close(seq=1)
    probs = softmax(logits)
    assert list(window.output_counts) == np.bincount(probs.argmax(1), minlength=C).tolist()
    assert list(window.confidence.edges) == CONFIDENCE_EDGES
    assert list(window.confidence.counts) == histogram(probs.max(1), CONFIDENCE_EDGES).tolist()
    # a class the profile never saw grows the counts instead of failing
    wide = np.zeros((1, C + 2), np.float32)
    wide[0, C + 1] = 9
    agg.record(raw=raw[:1], outputs=wide, latency_ms=1.0, prediction_ids=["x"])
    assert list(agg.close(seq=2).output_counts) == [0] * (C + 1) + [1]


def test_latency_is_counted_per_record(cls_profile: dict[str, Any]) -> None:
    raw, logits = make_data(5, seed=8)
    agg = aggregator(cls_profile)
    agg.record(raw=raw[:4], outputs=logits[:4], latency_ms=8.0, prediction_ids=list("abcd"))
    agg.record(raw=raw[4:], outputs=logits[4:], latency_ms=300.0, prediction_ids=["e"])
    window = agg.close(seq=1)
    assert list(window.latency.edges) == list(DEFAULT_LATENCY_EDGES_MS)
    expected = histogram([2.0] * 4 + [300.0], DEFAULT_LATENCY_EDGES_MS).tolist()
    assert list(window.latency.counts) == expected and sum(expected) == window.count


def test_reconstruction_scores(rec_profile: dict[str, Any]) -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(50, 2, 8)).astype(np.float32)
    out = x + rng.normal(scale=0.5, size=x.shape).astype(np.float32)
    agg = aggregator(rec_profile, task="reconstruction")
    for lo in range(0, 50, 10):
        part = slice(lo, lo + 10)
        ids = [str(i) for i in range(lo, lo + 10)]
        agg.record(
            raw=x[part], outputs=out[part], model_inputs=x[part], latency_ms=2.0, prediction_ids=ids
        )
    window = agg.close(seq=1)
    edges = rec_profile["output"]["score"]["edges"]
    assert list(window.output_counts) == histogram(reconstruction_error(out, x), edges).tolist()
    assert not window.HasField("confidence") and len(window.features) == 16
    with pytest.raises(ValueError, match="model_inputs"):
        agg.record(raw=x[:1], outputs=out[:1], latency_ms=1.0, prediction_ids=["a"])
    with pytest.raises(ValueError, match="kind"):
        aggregator(rec_profile, task="classification")


def test_reservoir_keeps_at_most_n_uniformly(cls_profile: dict[str, Any]) -> None:
    raw, logits = make_data(50, seed=10)
    assert not aggregator(cls_profile).close(seq=1).samples  # off by default
    agg = aggregator(cls_profile, reservoir_size=5, seed=42)
    hits = np.zeros(50, int)
    for trial in range(400):
        feed(agg, raw, logits, [1, 3, 1, 20, 25] if trial % 2 else [50])
        samples = agg.close(seq=trial + 1).samples
        ids = [int(s.prediction_id[1:]) for s in samples]
        assert len(samples) == 5 and len(set(ids)) == 5
        hits[ids] += 1
    assert hits.min() > 10 and hits.max() < 75  # expected 40 each
    assert abs(hits[:25].sum() - hits[25:].sum()) < 200
    sample = samples[0]
    i = int(sample.prediction_id[1:])
    assert list(sample.shape) == [3, 4] and sample.at == 1_700_000_000_000
    assert np.allclose(sample.values, raw[i].ravel())
    assert sample.predicted_label == int(logits[i].argmax())
    few = aggregator(cls_profile, reservoir_size=5)
    feed(few, raw[:3], logits[:3], [2, 1])
    assert [s.prediction_id for s in few.close(seq=1).samples] == ["p0", "p1", "p2"]


def test_windows_close_by_count_and_by_time(cls_profile: dict[str, Any]) -> None:
    clock = Clock(1000.0)
    raw, logits = make_data(10, seed=11)
    agg = aggregator(cls_profile, clock=clock, window_s=60, max_predictions=10)
    assert agg.empty() and not agg.due()
    feed(agg, raw[:9], logits[:9], [4, 5])
    assert not agg.due() and not agg.empty()
    feed(agg, raw[9:], logits[9:], [1])
    assert agg.due()
    clock.now = 1012.5
    first = agg.close(seq=1)
    assert (first.window_start, first.window_end, first.count) == (1_000_000, 1_012_500, 10)
    assert agg.empty() and not agg.due()
    clock.now = 1072.4
    assert not agg.due()
    agg.record_error(3)
    clock.now = 1072.5
    assert agg.due() and not agg.empty()
    second = agg.close(seq=2)
    assert (second.window_start, second.window_end) == (1_012_500, 1_072_500)
    assert (second.count, second.errors, sum(second.latency.counts)) == (0, 3, 0)
    assert all(s.count == 0 and s.min == 0 and s.max == 0 for s in second.features)
    with pytest.raises(ValueError, match="seq"):
        agg.close(seq=0)


def test_window_round_trips_through_protobuf(cls_profile: dict[str, Any]) -> None:
    raw, logits = make_data(30, seed=12)
    agg = aggregator(cls_profile, reservoir_size=3)
    feed(agg, raw, logits, [10, 20])
    agg.record_shadow(
        compared=5,
        agreed=4,
        latency_delta_ms=0.5,
        model="digits",
        version="4",
        bundle_digest=DIGEST,
    )
    window = agg.close(seq=7, dropped_windows=2)
    parsed = pb.TelemetryWindow.FromString(window.SerializeToString())
    assert parsed == window
    assert (parsed.device_id, parsed.seq, parsed.model, parsed.version) == (
        "cam-1",
        7,
        "digits",
        "3",
    )
    assert parsed.bundle_digest == DIGEST and parsed.dropped_windows == 2
    assert len(parsed.samples) == 3 and len(parsed.features) == F


def test_shadow_stats(cls_profile: dict[str, Any]) -> None:
    agg = aggregator(cls_profile)
    assert not agg.close(seq=1).HasField("shadow")
    candidate: dict[str, Any] = {"model": "digits", "version": "4", "bundle_digest": DIGEST}
    agg.record_shadow(compared=10, agreed=9, latency_delta_ms=1.0, **candidate)
    agg.record_shadow(compared=30, agreed=21, latency_delta_ms=3.0, errors=1, **candidate)
    agg.record_shadow(compared=0, agreed=0, latency_delta_ms=0.0, errors=2, **candidate)
    assert not agg.empty()
    shadow = agg.close(seq=2).shadow
    assert (shadow.model, shadow.version, shadow.bundle_digest) == ("digits", "4", DIGEST)
    assert (shadow.compared, shadow.agreed, shadow.errors) == (40, 30, 3)
    assert shadow.latency_delta_ms == pytest.approx(2.5)  # weighted by compared
    agg.record_shadow(compared=4, agreed=4, latency_delta_ms=1.0, **candidate)
    agg.record_shadow(compared=2, agreed=1, latency_delta_ms=1.0, **{**candidate, "version": "5"})
    shadow = agg.close(seq=3).shadow
    assert (shadow.version, shadow.compared, shadow.agreed) == ("5", 2, 1)  # a new candidate
    with pytest.raises(ValueError):
        agg.record_shadow(compared=1, agreed=2, latency_delta_ms=0.0, **candidate)


def test_bad_batches_are_refused(cls_profile: dict[str, Any]) -> None:
    raw, logits = make_data(4, seed=13)
    agg = aggregator(cls_profile)
    with pytest.raises(ValueError, match="batch"):
        agg.record(raw=raw, outputs=logits[:3], latency_ms=1.0, prediction_ids=list("abcd"))
    with pytest.raises(ValueError, match="prediction ids"):
        agg.record(raw=raw, outputs=logits, latency_ms=1.0, prediction_ids=["a"])
    with pytest.raises(ValueError, match="values"):
        agg.record(raw=raw[:, :2], outputs=logits, latency_ms=1.0, prediction_ids=list("abcd"))
    assert agg.empty()


def test_record_is_fast_for_single_records() -> None:
    rng = np.random.default_rng(14)
    raw = rng.integers(0, 17, (500, 64)).astype(np.float32)
    logits = rng.normal(size=(500, 10)).astype(np.float32)
    profile = build_profile(
        raw_inputs=raw,
        model_inputs=raw,
        outputs=logits,
        task="classification",
        feature_names=[f"px{i}" for i in range(64)],
        split="val",
    ).model_dump(mode="json")
    agg = aggregator(profile)
    x, y, ids = raw[:1], logits[:1], ["p"]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200):
            agg.record(raw=x, outputs=y, latency_ms=1.0, prediction_ids=ids)
        best = min(best, (time.perf_counter() - start) / 200)
    assert best < 500e-6  # ~30 us on a laptop-class CPU; generous for slow CI machines


def test_feedback_buffer() -> None:
    clock = Clock(500.0)
    buffer = FeedbackBuffer(device_id="cam-1", clock=clock)
    assert not buffer.due() and len(buffer) == 0
    buffer.add(prediction_id="p1", label=3, model="digits", version="3", predicted_label=5)
    clock.now = 505.0
    buffer.add(prediction_id="p2", value=0.25, model="ae", version="1", at=400.0)
    assert not buffer.due(max_labels=3, max_age_s=10)
    assert buffer.due(max_labels=2, max_age_s=10)
    clock.now = 510.0
    assert buffer.due(max_labels=3, max_age_s=10)  # the oldest is 10 s old
    with pytest.raises(ValueError, match="exactly one"):
        buffer.add(prediction_id="p3", label=1, value=1.0, model="m", version="1")
    with pytest.raises(ValueError, match="exactly one"):
        buffer.add(prediction_id="p3", model="m", version="1")
    feedback = pb.Feedback.FromString(buffer.close(seq=4).SerializeToString())
    assert (feedback.device_id, feedback.seq, len(feedback.labels)) == ("cam-1", 4, 2)
    first, second = feedback.labels
    assert (first.prediction_id, first.label, first.at, first.predicted_label) == (
        "p1",
        3,
        500_000,
        5,
    )
    assert first.WhichOneof("target") == "label" and first.HasField("predicted_label")
    assert (second.WhichOneof("target"), second.value, second.at) == ("value", 0.25, 400_000)
    assert not second.HasField("predicted_label") and (second.model, second.version) == ("ae", "1")
    assert len(buffer) == 0 and not buffer.due(max_labels=1, max_age_s=0)
    with pytest.raises(ValueError, match="seq"):
        buffer.close(seq=0)
