"""Which detectors apply to a reference, built and calibrated (see ``build_detectors``)."""

from __future__ import annotations

from collections.abc import Callable

from hub.monitoring.detectors._base import Detector, Reference
from hub.monitoring.detectors._histograms import FeatureChi2, PredictionChi2
from hub.monitoring.detectors.mmd import MMDDetector
from hub.monitoring.detectors.sequential import CUSUMDetector, PageHinkleyDetector

MIN_MMD_ROWS = 20
MIN_ROWS = 100  # raw reference rows for a row bootstrap of the feature sketches


def build(
    reference: Reference,
    *,
    false_alarm_rate: float,
    window_size: int,
    seed: int,
    family_wise: bool = False,
    labels: bool = True,
) -> list[Detector]:
    """Every detector that applies; ``family_wise``: the drift detectors (those that do not
    need labels) share ``false_alarm_rate`` (each gets its share), the accuracy detectors
    each keep the whole rate. Each detector is built, and calibrated, once."""
    plan = [(on_labels, make) for on_labels, make in _plan(reference) if labels or not on_labels]
    drift = sum(1 for on_labels, _ in plan if not on_labels)
    out: list[Detector] = []
    for on_labels, make in plan:
        share = false_alarm_rate / drift if family_wise and not on_labels else false_alarm_rate
        out.append(make(share, window_size, seed))
    return out


Maker = Callable[[float, int, int], Detector]  # (false_alarm_rate, window_size, seed)


def _plan(reference: Reference) -> list[tuple[bool, Maker]]:
    """(needs labels, how to build) for every detector that applies to ``reference``."""
    out: list[tuple[bool, Maker]] = []
    if len(reference.feature_counts) != len(reference.feature_edges):
        raise ValueError("reference: feature_counts and feature_edges differ in length")
    rows = reference.samples
    if rows is not None and (len(rows) < MIN_ROWS or rows.shape[1] != len(reference.feature_edges)):
        rows = None  # too few raw rows to resample (or not the sketched features)
    if reference.feature_counts and sum(int(c.sum()) for c in reference.feature_counts) > 0:
        out.append(
            (
                False,
                lambda far, size, seed: FeatureChi2(
                    reference_counts=reference.feature_counts,
                    reference_rows=rows,
                    edges=reference.feature_edges,
                    false_alarm_rate=far,
                    window_size=size,
                    seed=seed,
                ),
            )
        )
    if reference.class_counts is not None and reference.class_counts.sum() > 0:
        hists = [reference.class_counts]
        if reference.confidence_counts is not None and reference.confidence_counts.sum() > 0:
            hists.append(reference.confidence_counts)
        out.append(
            (
                False,
                lambda far, size, seed: PredictionChi2(
                    reference_counts=hists, false_alarm_rate=far, window_size=size, seed=seed
                ),
            )
        )
    elif reference.score_counts is not None and reference.score_counts.sum() > 0:
        scores = reference.score_counts
        out.append(
            (
                False,
                lambda far, size, seed: PredictionChi2(
                    reference_counts=[scores],
                    score_model=True,
                    false_alarm_rate=far,
                    window_size=size,
                    seed=seed,
                ),
            )
        )
    if reference.samples is not None and len(reference.samples) >= MIN_MMD_ROWS:
        samples = reference.samples
        out.append(
            (
                False,
                lambda far, size, seed: MMDDetector(
                    reference_samples=samples, false_alarm_rate=far, window_size=size, seed=seed
                ),
            )
        )
    if reference.accuracy is not None:
        accuracy, count = reference.accuracy, reference.accuracy_count

        def sequential(kind: type[CUSUMDetector] | type[PageHinkleyDetector]) -> Maker:
            return lambda far, size, seed: kind(
                accuracy=accuracy,
                accuracy_count=count,
                false_alarm_rate=far,
                window_size=size,
                seed=seed,
            )

        out += [(True, sequential(CUSUMDetector)), (True, sequential(PageHinkleyDetector))]
    return out
