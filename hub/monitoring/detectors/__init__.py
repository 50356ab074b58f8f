"""Drift detectors: numpy/scipy only, no database, no MQTT (the monitoring service feeds
them telemetry and stores their alerts).

``build_detectors(reference, false_alarm_rate=..., window_size=...)`` returns every
detector that applies to a :class:`Reference`, calibrated by bootstrapping the reference:

=========================  ==============  ==============================================
name                       needs           test
=========================  ==============  ==============================================
``feature_chi2``           feature_counts  per-feature G-tests on the binned sketches,
                                           min(Bonferroni min-p, summed-G p)
``prediction_chi2``        class_counts,   black-box shift detection: G-tests on class
                           confidence      counts + top-1 confidence (score models: the
                           (score_counts)  anomaly-score histogram)
``output_rank``            confidence      binned rank test (mean reference mid-rank) of
                           (score_counts)  the top-1 confidence (score models: the anomaly
                                           score), 80% of its rate on "less sure"
``mmd``                    samples         kernel MMD² of the reservoir vs reference rows
``accuracy_cusum``         correct         Bernoulli CUSUM vs the evaluated accuracy
``accuracy_page_hinkley``  correct         Page-Hinkley on the error indicator
=========================  ==============  ==============================================

The modules, bottom up: ``_base`` (``Reference``, ``Window``, the ``Detector`` protocol), the
detectors (``_histograms``, ``rank``, ``mmd``, ``sequential``; they import ``_base`` only), and
``_registry`` (:data:`KINDS`, the table of kinds, and ``build_detectors``), which imports
them all.
"""

from hub.monitoring.detectors._base import Detector, Reference, Window, scope_copy
from hub.monitoring.detectors._histograms import FeatureChi2, PredictionChi2
from hub.monitoring.detectors._registry import KINDS, Kind, build_detectors
from hub.monitoring.detectors.mmd import MMDDetector
from hub.monitoring.detectors.rank import OutputRank
from hub.monitoring.detectors.sequential import CUSUMDetector, PageHinkleyDetector

__all__ = [
    "KINDS",
    "CUSUMDetector",
    "Detector",
    "FeatureChi2",
    "Kind",
    "MMDDetector",
    "OutputRank",
    "PageHinkleyDetector",
    "PredictionChi2",
    "Reference",
    "Window",
    "build_detectors",
    "scope_copy",
]
