"""The detector kinds: which apply to a reference, built and calibrated (``build_detectors``).

The top of the package: it imports the base types and every detector module; none of them
imports it. :data:`KINDS` is the table: a new detector is its class plus one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hub.monitoring.detectors._base import Detector, Reference
from hub.monitoring.detectors._histograms import FeatureChi2, PredictionChi2
from hub.monitoring.detectors.mmd import MIN_SAMPLES, MMDDetector
from hub.monitoring.detectors.rank import OutputRank
from hub.monitoring.detectors.sequential import CUSUMDetector, PageHinkleyDetector

__all__ = ["KINDS", "Kind", "Maker", "build_detectors"]

MIN_MMD_ROWS = 20
MIN_ROWS = 100  # raw reference rows for a row bootstrap of the feature sketches

Maker = Callable[[float, int, int], Detector]  # (false_alarm_rate, window_size, seed)


@dataclass(frozen=True)
class Kind:
    """One detector kind: its ``name``, whether it needs ``labels`` (the accuracy
    detectors), ``plan``: how to build it for a reference (None: does not apply), and
    ``min_window``: the smallest window it can give a verdict on (smaller ``window_size``:
    not built, so it takes no share of a family-wise rate it could never spend)."""

    name: str
    labels: bool
    plan: Callable[[Reference], Maker | None]
    min_window: int = 1


def build_detectors(
    reference: Reference,
    *,
    false_alarm_rate: float = 0.01,
    window_size: int,
    seed: int = 0,
    family_wise: bool = False,
    labels: bool = True,
) -> list[Detector]:
    """Every detector applicable to ``reference``, each calibrated so that on windows of
    about ``window_size`` predictions drawn like the reference it flags drift with
    probability ``false_alarm_rate`` (the accuracy detectors: per ``window_size`` labelled
    predictions). The rate is per detector; ``family_wise=True`` shares it among the drift
    detectors instead (Bonferroni: each gets its share; the accuracy detectors keep the
    whole rate); ``labels=False`` leaves the accuracy detectors out, a ``window_size`` below a
    kind's ``min_window`` that kind (MMD below 20 records). Deterministic for a
    ``seed``; calibration is lazy per window size after the first (cached), so build once
    per model version and give each scope a :func:`scope_copy`. Each detector is built, and
    calibrated, once."""
    if len(reference.feature_counts) != len(reference.feature_edges):
        raise ValueError("reference: feature_counts and feature_edges differ in length")
    plan = [
        (kind.labels, make)
        for kind in KINDS
        if window_size >= kind.min_window
        and (labels or not kind.labels)
        and (make := kind.plan(reference)) is not None
    ]
    drift = sum(1 for on_labels, _ in plan if not on_labels)
    out: list[Detector] = []
    for on_labels, make in plan:
        share = false_alarm_rate / drift if family_wise and not on_labels else false_alarm_rate
        out.append(make(share, window_size, seed))
    return out


def _feature_chi2(reference: Reference) -> Maker | None:
    if not reference.feature_counts or sum(int(c.sum()) for c in reference.feature_counts) <= 0:
        return None
    rows = reference.samples
    if rows is not None and (len(rows) < MIN_ROWS or rows.shape[1] != len(reference.feature_edges)):
        rows = None  # too few raw rows to resample (or not the sketched features)
    return lambda far, size, seed: FeatureChi2(
        reference_counts=reference.feature_counts,
        reference_rows=rows,
        edges=reference.feature_edges,
        false_alarm_rate=far,
        window_size=size,
        seed=seed,
    )


def _prediction_chi2(reference: Reference) -> Maker | None:
    if reference.class_counts is not None and reference.class_counts.sum() > 0:
        hists = [reference.class_counts]
        joint = None
        if reference.confidence_counts is not None and reference.confidence_counts.sum() > 0:
            hists.append(reference.confidence_counts)
            joint = reference.class_confidence  # None in profiles before the joint table
        return lambda far, size, seed: PredictionChi2(
            reference_counts=hists, false_alarm_rate=far, window_size=size, seed=seed, joint=joint
        )
    if reference.score_counts is not None and reference.score_counts.sum() > 0:
        scores = reference.score_counts
        return lambda far, size, seed: PredictionChi2(
            reference_counts=[scores],
            score_model=True,
            false_alarm_rate=far,
            window_size=size,
            seed=seed,
        )
    return None


def _output_rank(reference: Reference) -> Maker | None:
    score_model = reference.class_counts is None
    counts = reference.score_counts if score_model else reference.confidence_counts
    if counts is None or np.count_nonzero(counts) < 2:  # nothing to rank
        return None
    return lambda far, size, seed: OutputRank(
        reference_counts=counts,
        score_model=score_model,
        false_alarm_rate=far,
        window_size=size,
        seed=seed,
    )


def _mmd(reference: Reference) -> Maker | None:
    samples = reference.samples
    if samples is None or len(samples) < MIN_MMD_ROWS:
        return None
    return lambda far, size, seed: MMDDetector(
        reference_samples=samples, false_alarm_rate=far, window_size=size, seed=seed
    )


def _sequential(
    kind: type[CUSUMDetector] | type[PageHinkleyDetector],
) -> Callable[[Reference], Maker | None]:
    def plan(reference: Reference) -> Maker | None:
        accuracy, count = reference.accuracy, reference.accuracy_count
        if accuracy is None:
            return None
        return lambda far, size, seed: kind(
            accuracy=accuracy,
            accuracy_count=count,
            false_alarm_rate=far,
            window_size=size,
            seed=seed,
        )

    return plan


KINDS: tuple[Kind, ...] = (
    Kind(FeatureChi2.name, labels=False, plan=_feature_chi2),
    Kind(PredictionChi2.name, labels=False, plan=_prediction_chi2),
    Kind(OutputRank.name, labels=False, plan=_output_rank),
    Kind(MMDDetector.name, labels=False, plan=_mmd, min_window=MIN_SAMPLES),
    Kind(CUSUMDetector.name, labels=True, plan=_sequential(CUSUMDetector)),
    Kind(PageHinkleyDetector.name, labels=True, plan=_sequential(PageHinkleyDetector)),
)
