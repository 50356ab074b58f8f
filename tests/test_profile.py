from __future__ import annotations

import numpy as np
import pytest

from model_packager.profile import build_profile, histogram, quantile_edges


def test_histogram_rule_matches_the_protocol() -> None:
    counts = histogram([0.0, 0.5, 1.0, 1.5, 2.0, np.nan, np.inf], [1.0, 2.0])
    # x < 1 | 1 <= x < 2 | x >= 2 ; non-finite values are left out
    assert counts.tolist() == [2, 2, 1]


def test_quantile_edges_are_distinct_and_handle_constant_features() -> None:
    rng = np.random.default_rng(0)
    edges = quantile_edges(rng.normal(size=10_000), bins=10)
    assert len(edges) == 9 and edges == sorted(set(edges))
    counts = histogram(rng.normal(size=10_000), edges)
    assert counts.sum() == 10_000 and counts.min() > 800  # roughly uniform over the bins
    constant = quantile_edges(np.zeros(100), bins=10)
    assert histogram(np.zeros(100), constant).tolist() == [100, 0]
    assert histogram([0.0, 1.0], constant).tolist() == [1, 1]


def test_classifier_profile() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 17, (500, 8, 8)).astype(np.float32)
    logits = rng.normal(size=(500, 10)).astype(np.float32)
    logits[:, 3] += 5
    profile = build_profile(
        raw_inputs=raw,
        model_inputs=raw,
        outputs=logits,
        task="classification",
        feature_names=[f"px{i}" for i in range(64)],
        split="val",
    )
    assert len(profile.features) == 64 and profile.num_samples == 500
    assert all(sum(f.counts) == 500 for f in profile.features)
    assert profile.output.kind == "classes" and int(np.argmax(profile.output.class_counts)) == 3
    assert profile.output.confidence is not None and sum(profile.output.confidence.counts) == 500
    assert type(profile).model_validate_json(profile.model_dump_json()) == profile


def test_reconstruction_profile_scores_the_error() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3, 16)).astype(np.float32)
    out = x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
    profile = build_profile(
        raw_inputs=x,
        model_inputs=x,
        outputs=out,
        task="reconstruction",
        feature_names=[f"f{i}" for i in range(48)],
        split="val",
    )
    assert profile.output.kind == "score" and profile.output.score is not None
    assert profile.output.score_quantiles["p50"] == pytest.approx(0.01, rel=0.2)
    with pytest.raises(ValueError, match="feature names"):
        build_profile(
            raw_inputs=x,
            model_inputs=x,
            outputs=out,
            task="reconstruction",
            feature_names=["a"],
            split="val",
        )
