"""Drift detectors: the protocol every detector keeps, calibration against the target
false-alarm rate on no-drift windows, and the reference built from a real profile."""

from __future__ import annotations

import dataclasses
import doctest
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

import hub.monitoring.detectors._histograms as histograms_module
import hub.monitoring.detectors.mmd as mmd_module
import hub.monitoring.detectors.rank as rank_module
import hub.monitoring.detectors.sequential as sequential_module
from hub.monitoring.detectors import (
    KINDS,
    Detector,
    FeatureChi2,
    Reference,
    Window,
    build_detectors,
    scope_copy,
)
from model_packager.profile import (
    CONFIDENCE_EDGES,
    ReferenceProfile,
    build_profile,
    histogram,
    softmax,
)

# every kind in the registry's table: a new detector is covered here with no edit
ALL = [kind.name for kind in KINDS]
WINDOW_FIELDS = {f.name for f in dataclasses.fields(Window)}
D, K = 6, 4
WEIGHTS = np.random.default_rng(42).normal(size=(D, K))


@dataclass(frozen=True)
class Batch:
    raw: npt.NDArray[np.float64]
    logits: npt.NDArray[np.float64]
    correct: npt.NDArray[np.bool_]


def population(rng: np.random.Generator, n: int, *, shift: float = 0.0) -> Batch:
    """Mixed features (gaussian, skewed, integer-valued, constant) and a fixed linear
    classifier; ``shift`` moves every feature and makes the labels noisier."""
    raw = np.column_stack(
        [
            rng.normal(size=n),
            rng.exponential(size=n),
            rng.integers(0, 5, size=n).astype(float),
            rng.normal(2.0, 0.5, size=n),
            rng.uniform(size=n),
            np.zeros(n),
        ]
    )
    raw = raw + shift
    logits = raw @ WEIGHTS
    labels = logits.argmax(axis=1)
    flip = rng.random(n) < 0.08 + 0.5 * min(abs(shift), 1.0)
    labels = np.where(flip, rng.integers(0, K, size=n), labels)
    return Batch(raw=raw, logits=logits, correct=labels == logits.argmax(axis=1))


def window(batch: Batch, ref: Reference) -> Window:
    """Sketched the way the agent does (``model_packager.profile.histogram``)."""
    probs = softmax(batch.logits)
    return Window(
        n=len(batch.raw),
        feature_counts=[histogram(batch.raw[:, j], e) for j, e in enumerate(ref.feature_edges)],
        class_counts=np.bincount(probs.argmax(axis=1), minlength=K),
        confidence_counts=histogram(probs.max(axis=1), CONFIDENCE_EDGES),
        samples=batch.raw,
        correct=batch.correct,
    )


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(7)
    ref = population(rng, 800)
    profile = build_profile(
        raw_inputs=ref.raw,
        model_inputs=ref.raw,
        outputs=ref.logits,
        task="classification",
        feature_names=[f"f{i}" for i in range(D)],
        split="val",
    )
    return Reference.from_profile(profile, samples=ref.raw, accuracy=float(ref.correct.mean()))


@pytest.fixture(scope="module")
def detectors(reference: Reference) -> dict[str, Detector]:
    built = build_detectors(reference, false_alarm_rate=0.05, window_size=50, seed=3)
    return {d.name: d for d in built}


def test_build_detectors_covers_every_kind(detectors: dict[str, Detector]) -> None:
    assert sorted(detectors) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_detector_conformance(
    name: str, reference: Reference, detectors: dict[str, Detector]
) -> None:
    det = detectors[name]
    det.reset()
    assert isinstance(det, Detector)
    assert det.needs and det.needs <= WINDOW_FIELDS
    # before any data: no drift, a calibrated finite threshold
    assert det.drift_detected is False and det.p_value is None
    assert math.isfinite(det.threshold) and det.threshold > 0
    # a window without the fields it needs is no observation
    det.update(Window(n=50))
    assert det.drift_detected is False

    rng = np.random.default_rng(11)
    calm = window(population(rng, 50), reference)
    det.update(calm)
    calm_score = det.score
    shifted = window(population(rng, 50, shift=1.5), reference)
    det.update(shifted)
    if not det.drift_detected:  # a sequential detector may need one more window
        det.update(window(population(rng, 50, shift=1.5), reference))
    assert det.drift_detected, f"{name} missed a gross shift (score {det.score})"
    assert det.score > det.threshold >= 0
    assert det.score > calm_score
    if name.startswith("accuracy"):
        assert det.p_value is None
    else:
        assert det.p_value is not None and det.p_value <= 0.05

    det.reset()
    assert det.drift_detected is False and det.score == 0.0

    # deterministic: the same seed gives the same thresholds and scores
    again = {
        d.name: d for d in build_detectors(reference, false_alarm_rate=0.05, window_size=50, seed=3)
    }[name]
    for w in (calm, shifted):
        det.reset()
        again.reset()
        det.update(w)
        again.update(w)
        assert (again.score, again.threshold, again.drift_detected) == (
            det.score,
            det.threshold,
            det.drift_detected,
        )


@pytest.mark.parametrize("name", ALL)
def test_scope_copies_share_the_reference_and_keep_their_own_state(
    name: str, reference: Reference, detectors: dict[str, Detector]
) -> None:
    """What the hub keeps per monitored scope: a copy whose arrays and calibration are the
    template's own objects (bytes per scope, not megabytes) and whose verdicts are its own."""
    template = detectors[name]
    template.reset()
    first, second = scope_copy(template), scope_copy(template)
    rng = np.random.default_rng(5)
    for _ in range(2):
        first.update(window(population(rng, 50, shift=1.5), reference))
    assert first.drift_detected
    assert not second.drift_detected and second.score == 0.0
    assert not template.drift_detected and template.score == 0.0
    # nothing but scalars of its own: every array and table is shared with the template
    own = {
        k: v
        for k, v in vars(first).items()
        if not any(v is t for t in vars(template).values())
        and not isinstance(v, (bool, int, float, str, type(None), tuple))
    }
    assert own == {}, f"{name} copies {sorted(own)} per scope"
    score = first.score
    second.update(window(population(rng, 50), reference))
    assert first.drift_detected and first.score == score


def test_one_windows_statistic_is_the_loops(reference: Reference) -> None:
    """The update path computes a window's statistic in one pass; it is the calibration
    loop's, on windows drawn near and far from the reference."""
    det = FeatureChi2(
        reference_counts=reference.feature_counts,
        reference_rows=reference.samples,
        edges=reference.feature_edges,
        false_alarm_rate=0.05,
        window_size=50,
    )
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.3, 2.0):
        counts = window(population(rng, 60, shift=shift), reference).feature_counts
        assert counts is not None
        rows = [np.asarray(c, np.int64)[None, :] for c in counts]
        fast = det._log_p_one(rows)
        assert fast is not None and fast == pytest.approx(float(det._log_p(rows)[0]), abs=1e-9)


def _binomial_ok(alarms: int, trials: int, rate: float) -> bool:
    return float(stats.binomtest(alarms, trials, rate).pvalue) > 1e-3


def _reference(seed: int) -> Reference:
    ref = population(np.random.default_rng(seed), 800)
    profile = build_profile(
        raw_inputs=ref.raw,
        model_inputs=ref.raw,
        outputs=ref.logits,
        task="classification",
        feature_names=[f"f{i}" for i in range(D)],
        split="val",
    )
    return Reference.from_profile(profile, samples=ref.raw, accuracy=float(ref.correct.mean()))


@pytest.fixture(scope="module")
def null_worlds() -> list[tuple[Reference, dict[str, Detector]]]:
    """Several reference draws: calibration holds on average over the reference (one
    reference of 800 rows is itself a sample; its own luck moves one detector's rate)."""
    out = []
    for seed in (21, 22, 23, 24):
        ref = _reference(seed)
        built = build_detectors(ref, false_alarm_rate=0.05, window_size=40, seed=seed)
        out.append((ref, {d.name: d for d in built}))
    return out


@pytest.mark.parametrize("name", ALL)
def test_false_alarm_rate_on_no_drift_windows(
    name: str, null_worlds: list[tuple[Reference, dict[str, Detector]]]
) -> None:
    """Fresh windows from the population the references were drawn from: the share of
    flagged windows is within a binomial bound of the 5% target. The sequential detectors
    run on long streams of labels at their null error rate (the upper confidence bound of the
    evaluated error, see ``reference_error``), so this also checks their per-window
    calibration; at the evaluated accuracy itself they alarm less (next test)."""
    rng = np.random.default_rng(123)
    trials = alarms = 0
    for ref, dets in null_worlds:
        det = dets[name]
        det.reset()
        assert ref.accuracy is not None
        for _ in range(100):
            w = window(population(rng, 40), ref)
            if name.startswith("accuracy"):
                null_accuracy = 1.0 - float(det.error_rate)  # type: ignore[attr-defined]
                w = dataclasses.replace(w, correct=rng.random(40) < null_accuracy)
            det.update(w)
            alarms += det.drift_detected
            trials += 1
    assert _binomial_ok(alarms, trials, 0.05), f"{name}: {alarms}/{trials} false alarms"


@pytest.mark.parametrize("name", ["accuracy_cusum", "accuracy_page_hinkley"])
def test_sequential_detectors_stay_quiet_at_the_evaluated_accuracy(
    name: str, null_worlds: list[tuple[Reference, dict[str, Detector]]]
) -> None:
    """Labels arriving at exactly the evaluated accuracy (a point estimate from a finite test
    split) raise at most the target rate of alarms: the null is conservative, never eager."""
    rng = np.random.default_rng(7)
    trials = alarms = 0
    for ref, dets in null_worlds:
        det = dets[name]
        det.reset()
        assert ref.accuracy is not None
        for _ in range(100):
            w = window(population(rng, 40), ref)
            det.update(dataclasses.replace(w, correct=rng.random(40) < ref.accuracy))
            alarms += det.drift_detected
            trials += 1
    p_more = float(stats.binomtest(alarms, trials, 0.05, alternative="greater").pvalue)
    assert p_more > 1e-3, f"{name}: {alarms}/{trials} false alarms"


def test_false_alarm_rate_on_windows_resampled_from_reference_counts() -> None:
    """Without reference uncertainty the null is exactly "multinomial on the reference
    counts": windows drawn that way are flagged at the target rate."""
    rng = np.random.default_rng(5)
    ref = [rng.multinomial(300, rng.dirichlet(np.ones(6))) for _ in range(8)]
    det = FeatureChi2(
        reference_counts=ref, false_alarm_rate=0.05, window_size=30, reference_uncertainty=False
    )
    probs = [c / c.sum() for c in ref]
    trials, alarms = 600, 0
    for _ in range(trials):
        det.update(Window(n=30, feature_counts=[rng.multinomial(30, p) for p in probs]))
        alarms += det.drift_detected
    assert _binomial_ok(alarms, trials, 0.05), f"{alarms}/{trials}"


def test_reference_from_a_real_profile() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 17, (300, 4, 4)).astype(np.float32)
    logits = rng.normal(size=(300, 3))
    profile = build_profile(
        raw_inputs=raw,
        model_inputs=raw,
        outputs=logits,
        task="classification",
        feature_names=[f"px{i}" for i in range(16)],
        split="val",
    )
    ref = Reference.from_profile(profile, samples=raw, accuracy=0.9)
    assert len(ref.feature_edges) == len(ref.feature_counts) == 16
    for edges, counts, f in zip(
        ref.feature_edges, ref.feature_counts, profile.features, strict=True
    ):
        assert len(counts) == len(edges) + 1 and counts.sum() == 300
        assert counts.tolist() == histogram(raw.reshape(300, -1)[:, f.index], edges).tolist()
    assert ref.class_counts is not None and ref.class_counts.sum() == 300
    assert ref.confidence_edges is not None and ref.confidence_edges.tolist() == CONFIDENCE_EDGES
    assert ref.samples is not None and ref.samples.shape == (300, 16)
    assert ref.accuracy == 0.9 and ref.accuracy_count == 300
    assert ref.score_counts is None
    # the model's outputs on the reference rows: per predicted class, its confidence histogram
    probs = softmax(logits)
    joint = ref.class_confidence
    assert joint is not None and joint.shape == (3, len(CONFIDENCE_EDGES) + 1)
    for k in range(3):
        mine = probs.argmax(axis=1) == k
        assert joint[k].tolist() == histogram(probs.max(axis=1)[mine], CONFIDENCE_EDGES).tolist()
    assert joint.sum(axis=1).tolist() == ref.class_counts.tolist()
    assert ref.confidence_counts is not None
    assert joint.sum(axis=0).tolist() == ref.confidence_counts.tolist()


def test_a_profile_without_the_outputs_table_still_gets_the_output_detectors() -> None:
    """A profile packaged before the joint table (no ``class_confidence``): prediction_chi2
    falls back to its two margins resampled apart; output_rank needs only the histogram."""
    rng = np.random.default_rng(4)
    ref = population(rng, 600)
    profile = build_profile(
        raw_inputs=ref.raw,
        model_inputs=ref.raw,
        outputs=ref.logits,
        task="classification",
        feature_names=[f"f{i}" for i in range(D)],
        split="val",
    )
    old = profile.model_dump()
    del old["output"]["class_confidence"]
    reference = Reference.from_profile(ReferenceProfile.model_validate(old))
    assert reference.class_confidence is None
    dets = {d.name: d for d in build_detectors(reference, window_size=40, labels=False)}
    assert sorted(dets) == ["feature_chi2", "output_rank", "prediction_chi2"]
    assert dets["prediction_chi2"]._joint is None  # type: ignore[attr-defined]
    new = Reference.from_profile(profile)
    built = build_detectors(new, window_size=40, labels=False)
    assert {d.name: d for d in built}["prediction_chi2"]._joint is not None  # type: ignore[attr-defined]


def test_score_model_reference_gets_a_score_histogram_detector() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    out = x + rng.normal(scale=0.1, size=x.shape)
    profile = build_profile(
        raw_inputs=x,
        model_inputs=x,
        outputs=out,
        task="reconstruction",
        feature_names=list("abcde"),
        split="val",
    )
    ref = Reference.from_profile(profile)
    assert ref.class_counts is None and ref.score_counts is not None
    dets = {d.name: d for d in build_detectors(ref, window_size=50)}
    assert sorted(dets) == ["feature_chi2", "output_rank", "prediction_chi2"]
    assert ref.score_edges is not None
    err = ((rng.normal(scale=0.5, size=(50, 5))) ** 2).mean(axis=1)  # reconstructions got worse
    for name in ("prediction_chi2", "output_rank"):
        det = dets[name]
        assert det.needs == {"score_counts"}
        det.update(Window(n=50, score_counts=histogram(err, ref.score_edges)))
        assert det.drift_detected, name


def test_unseen_class_and_malformed_windows(reference: Reference) -> None:
    dets = {d.name: d for d in build_detectors(reference, window_size=50)}
    pred = dets["prediction_chi2"]
    base = window(population(np.random.default_rng(2), 50), reference)
    assert base.class_counts is not None
    extra = np.append(base.class_counts - np.eye(K, dtype=np.int64)[0] * 0, 25)  # a new class
    pred.update(dataclasses.replace(base, class_counts=extra))
    assert pred.drift_detected
    with pytest.raises(ValueError):
        dets["feature_chi2"].update(Window(n=5, feature_counts=[np.array([1, 2, 2])]))
    with pytest.raises(ValueError):
        dets["mmd"].update(Window(n=5, samples=np.zeros((5, D + 1))))
    with pytest.raises(ValueError):
        dets["accuracy_cusum"].update(Window(n=2, correct=np.array([0.5, 2.0])))


@pytest.mark.parametrize("module", [histograms_module, rank_module, mmd_module, sequential_module])
def test_docstring_examples_run(module: Any) -> None:
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_an_output_only_shift_is_flagged(reference: Reference) -> None:
    """Windows whose inputs are drawn like the reference's but whose model outputs are not (a
    model that became unsure: each record's logits shrunk towards uniform, its predicted
    class unchanged): the feature detectors and MMD see nothing, the output detectors do,
    under the same family-wise budget."""
    dets = {
        d.name: d
        for d in build_detectors(
            reference, false_alarm_rate=0.05, window_size=30, seed=1, family_wise=True
        )
        if not d.name.startswith("accuracy")
    }
    rng = np.random.default_rng(8)
    flagged: dict[str, int] = dict.fromkeys(dets, 0)
    trials = 20
    for _ in range(trials):
        batch = population(rng, 30)
        unsure = Batch(raw=batch.raw, logits=batch.logits * 0.25, correct=batch.correct)
        w = window(unsure, reference)
        for name, det in dets.items():
            det.reset()
            det.update(w)
            flagged[name] += det.drift_detected
    assert flagged["feature_chi2"] <= 3 and flagged["mmd"] <= 3  # inputs: as the reference
    assert flagged["output_rank"] >= 0.9 * trials, flagged
    assert flagged["prediction_chi2"] >= 0.5 * trials, flagged


def test_the_joint_null_keeps_prediction_chi2_within_its_rate() -> None:
    """prediction_chi2 with the outputs table (rows of the joint table resampled, summed G
    tested too), on windows drawn from the population the references came from: within a
    binomial bound of the 5% target."""
    rng = np.random.default_rng(31)
    trials = alarms = 0
    for seed in (41, 42, 43, 44):
        ref = _reference(seed)
        assert ref.class_confidence is not None
        det = {d.name: d for d in build_detectors(ref, false_alarm_rate=0.05, window_size=40)}[
            "prediction_chi2"
        ]
        for _ in range(150):
            det.update(window(population(rng, 40), ref))
            alarms += det.drift_detected
            trials += 1
    assert _binomial_ok(alarms, trials, 0.05), f"{alarms}/{trials} false alarms"


def test_output_rank_is_a_binned_mann_whitney() -> None:
    """The mean reference mid-rank of a window is Mann-Whitney's U / (n m) on the binned
    values (ties counted half), and its z the one the docs give."""
    rng = np.random.default_rng(12)
    ref_bins = rng.integers(0, 6, size=300)
    win_bins = rng.integers(1, 7, size=25)
    ref, win = np.bincount(ref_bins, minlength=7), np.bincount(win_bins, minlength=7)
    det = rank_module.OutputRank(reference_counts=ref, false_alarm_rate=0.05, window_size=25)
    u = stats.mannwhitneyu(win_bins, ref_bins).statistic
    mean_rank = float(win @ det._ranks) / 25
    assert mean_rank == pytest.approx(u / (25 * 300))
    z = (0.5 - mean_rank) * math.sqrt(25) / det._sd1  # less confident: positive
    expected = -min(stats.norm.logsf(z) - math.log(0.8), stats.norm.logcdf(z) - math.log(0.2))
    det.update(Window(n=25, confidence_counts=win))
    assert det.score == pytest.approx(max(expected, 0.0) / math.log(10.0))


def test_a_detector_that_cannot_see_the_window_size_takes_no_share(reference: Reference) -> None:
    """MMD gives no verdict below 20 records: at windows of 10 it is not built and the
    family-wise rate is shared by the drift detectors that can spend it."""
    small = build_detectors(
        reference, false_alarm_rate=0.06, window_size=10, family_wise=True, labels=False
    )
    assert sorted(d.name for d in small) == ["feature_chi2", "output_rank", "prediction_chi2"]
    assert all(d._table.false_alarm_rate == pytest.approx(0.02) for d in small)  # type: ignore[attr-defined]
    usual = build_detectors(
        reference, false_alarm_rate=0.06, window_size=20, family_wise=True, labels=False
    )
    assert "mmd" in {d.name for d in usual}
    assert all(d._table.false_alarm_rate == pytest.approx(0.015) for d in usual)  # type: ignore[attr-defined]
