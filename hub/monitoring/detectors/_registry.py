"""Which detectors apply to a reference, built and calibrated (see ``build_detectors``)."""

from __future__ import annotations

from hub.monitoring.detectors._base import Detector, Reference
from hub.monitoring.detectors._histograms import FeatureChi2, PredictionChi2
from hub.monitoring.detectors.mmd import MMDDetector
from hub.monitoring.detectors.sequential import CUSUMDetector, PageHinkleyDetector

MIN_MMD_ROWS = 20
MIN_ROWS = 100  # raw reference rows for a row bootstrap of the feature sketches


def build(
    reference: Reference, *, false_alarm_rate: float, window_size: int, seed: int
) -> list[Detector]:
    far, size = false_alarm_rate, window_size
    out: list[Detector] = []
    if len(reference.feature_counts) != len(reference.feature_edges):
        raise ValueError("reference: feature_counts and feature_edges differ in length")
    rows = reference.samples
    if rows is not None and (len(rows) < MIN_ROWS or rows.shape[1] != len(reference.feature_edges)):
        rows = None  # too few raw rows to resample (or not the sketched features)
    if reference.feature_counts and sum(int(c.sum()) for c in reference.feature_counts) > 0:
        out.append(
            FeatureChi2(
                reference_counts=reference.feature_counts,
                reference_rows=rows,
                edges=reference.feature_edges,
                false_alarm_rate=far,
                window_size=size,
                seed=seed,
            )
        )
    if reference.class_counts is not None and reference.class_counts.sum() > 0:
        hists = [reference.class_counts]
        if reference.confidence_counts is not None and reference.confidence_counts.sum() > 0:
            hists.append(reference.confidence_counts)
        out.append(
            PredictionChi2(
                reference_counts=hists, false_alarm_rate=far, window_size=size, seed=seed
            )
        )
    elif reference.score_counts is not None and reference.score_counts.sum() > 0:
        out.append(
            PredictionChi2(
                reference_counts=[reference.score_counts],
                score_model=True,
                false_alarm_rate=far,
                window_size=size,
                seed=seed,
            )
        )
    if reference.samples is not None and len(reference.samples) >= MIN_MMD_ROWS:
        out.append(
            MMDDetector(
                reference_samples=reference.samples,
                false_alarm_rate=far,
                window_size=size,
                seed=seed,
            )
        )
    if reference.accuracy is not None:
        for kind in (CUSUMDetector, PageHinkleyDetector):
            out.append(
                kind(
                    accuracy=reference.accuracy,
                    accuracy_count=reference.accuracy_count,
                    false_alarm_rate=far,
                    window_size=size,
                    seed=seed,
                )
            )
    return out
