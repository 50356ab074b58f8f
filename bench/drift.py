"""Drift detection: ``hub.monitoring.detectors`` against black-box shift detection with
univariate KS tests (BBSD-KS, Rabanser et al. 2019) on the softmax outputs, same windows,
same run.

Streams from sklearn digits (``bench._drift_streams``), over ``WORLDS`` seeded splits (a
detector's calibration holds on average over reference draws; one 400-row reference has
its own luck): per split, window size (10 ... 500) and
shift (gaussian noise, rotation, contrast/brightness, pixel knockout, label-prior shift,
unseen-class mix; two intensities, two fractions of the window shifted) ``STREAMS`` streams
of ``PRE`` clean windows then ``POST`` shifted ones, plus no-shift streams. Measured per
detector and window size: detection rate (share of shifted windows flagged), delay (windows
from the onset to the first flag, streams flagged within ``POST``), false-alarm rate (share
of clean windows flagged: no-shift streams and the windows before an onset).

``ours``: the window detectors that need no labels (``feature_chi2``, ``prediction_chi2``,
``output_rank``, ``mmd``), built by ``build_detectors(family_wise=True)`` at ``ALPHA`` (each
gets ``ALPHA / 4``, the monitor's own split; at windows of 10, below MMD's 20 records, MMD is
not built and the other three get ``ALPHA / 3``), flagging when any does: a family-wise budget of
``ALPHA`` per window, as BBSD-KS (Bonferroni over the classes at ``ALPHA``). The accuracy
detectors (labels for every prediction) run at ``ALPHA`` each and are reported beside.
Ratio = ours / BBSD-KS mean detection rate; target: ours >= BBSD-KS at every window size
and, per window size, on every shift kind (detection over its intensities and fractions),
with every false-alarm rate within ``ALPHA`` (plus a binomial margin).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
from scipy import stats

from bench._drift_streams import World, build_world, configs, draw, sketch
from bench._result import RESULTS, BenchResult
from hub.monitoring.detectors import (
    CUSUMDetector,
    Detector,
    PageHinkleyDetector,
    build_detectors,
)

SIZES = (10, 20, 50, 100, 200, 500)
ALPHA = 0.05
WORLDS = (0, 1, 2)  # seeded splits: calibration is a promise on average over references
STREAMS, NO_SHIFT_STREAMS = 5, 20  # per world, shift and window size
PRE, POST = 2, 3
UNSUPERVISED = ("feature_chi2", "prediction_chi2", "output_rank", "mmd")
SEQUENTIAL = ("accuracy_cusum", "accuracy_page_hinkley")
ROWS = ("ours", *UNSUPERVISED, *SEQUENTIAL, "bbsd_ks")


def bbsd_ks(world: World, probs: np.ndarray) -> bool:
    """The baseline: a two-sample KS test per softmax output, Bonferroni at ``ALPHA``."""
    p = np.asarray(stats.ks_2samp(world.ref_probs, probs, axis=0).pvalue)  # one per class
    return float(p.min()) < ALPHA / world.classes


def _detectors(world: World, size: int, seed: int) -> dict[str, Detector]:
    built = build_detectors(
        world.reference,
        false_alarm_rate=ALPHA,
        window_size=size,
        seed=seed,
        family_wise=True,  # ALPHA shared by the drift detectors, as the monitor shares it
        labels=False,
    )
    out = {d.name: d for d in built}
    if not set(out) <= set(UNSUPERVISED):
        raise RuntimeError(f"expected the drift detectors {UNSUPERVISED}, built {sorted(out)}")
    common: dict[str, Any] = {"accuracy": world.accuracy, "false_alarm_rate": ALPHA}
    out["accuracy_cusum"] = CUSUMDetector(**common, window_size=size, seed=seed)
    out["accuracy_page_hinkley"] = PageHinkleyDetector(**common, window_size=size, seed=seed)
    return out


def run_size(world: World, size: int, *, seed: int, into: dict[str, Any]) -> None:
    """Flags per (row, config) into ``into``: 0/1 per window, before/after onset apart."""
    dets = _detectors(world, size, seed)
    clean: dict[str, list[int]] = into["clean"]
    shifted: dict[tuple[str, str], list[int]] = into["shifted"]
    delays: dict[tuple[str, str], list[int | None]] = into["delays"]
    rng = np.random.default_rng([seed, size])
    for config in configs():
        streams = NO_SHIFT_STREAMS if config.shift == "none" else STREAMS
        for _ in range(streams):
            for d in dets.values():
                d.reset()
            first: dict[str, int | None] = dict.fromkeys(ROWS)
            for t in range(PRE + POST):
                is_shifted = config.shift != "none" and t >= PRE
                batch = draw(world, config, n=size, shifted=is_shifted, rng=rng)
                window = sketch(world, batch)
                flags: dict[str, int] = dict.fromkeys(UNSUPERVISED, 0)  # not built: silent
                for name, det in dets.items():
                    det.update(window)
                    flags[name] = int(det.drift_detected)
                flags["ours"] = max(flags[n] for n in UNSUPERVISED)
                flags["bbsd_ks"] = int(bbsd_ks(world, batch.probs))
                for row, flag in flags.items():
                    if not is_shifted:
                        clean[row].append(flag)
                    else:
                        shifted[row, config.label].append(flag)
                        if flag and first[row] is None:
                            first[row] = t - PRE
            if config.shift != "none":
                for row in ROWS:
                    delays[row, config.label].append(first[row])


def summarise(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    labels = sorted({label for _, label in raw["shifted"]})
    kinds = sorted({lb.split("/")[0] for lb in labels})
    out: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        per_config = {lb: float(np.mean(raw["shifted"][row, lb])) for lb in labels}
        per_kind = {
            k: float(
                np.mean(
                    [f for lb in labels if lb.startswith(k + "/") for f in raw["shifted"][row, lb]]
                )
            )
            for k in kinds
        }
        found = [d for lb in labels for d in raw["delays"][row, lb] if d is not None]
        streams = [d for lb in labels for d in raw["delays"][row, lb]]
        out[row] = {
            "detection_rate": float(np.mean(list(per_config.values()))),
            "stream_detection_rate": len(found) / len(streams),
            "mean_delay_windows": float(np.mean(found)) if found else None,
            "false_alarm_rate": float(np.mean(raw["clean"][row])),
            "clean_windows": len(raw["clean"][row]),
            "per_shift": per_config,
            "per_kind": per_kind,
        }
    return out


def _plot(results: dict[int, dict[str, dict[str, Any]]]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is a convenience; the JSON carries the numbers
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in ROWS:
        rates = [results[s][row]["detection_rate"] for s in SIZES]
        style = {"ours": "-o", "bbsd_ks": "--s"}.get(row, ":.")
        ax.plot(SIZES, rates, style, label=row, linewidth=2.5 if row in ("ours", "bbsd_ks") else 1)
    ax.set_xscale("log")
    ax.set_xticks(SIZES, [str(s) for s in SIZES])
    ax.set_xlabel("window size (predictions)")
    ax.set_ylabel("detection rate (shifted windows flagged)")
    ax.set_title(f"digits drift streams, false-alarm budget {ALPHA} per window")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "drift.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def kind_table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    """Detection per window size and shift kind, ours / BBSD-KS (``<``: ours trails)."""
    kinds = list(results[SIZES[0]]["ours"]["per_kind"])
    lines = ["| window | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for size in SIZES:
        ours, base = results[size]["ours"]["per_kind"], results[size]["bbsd_ks"]["per_kind"]
        cells = [f"{ours[k]:.3f} / {base[k]:.3f}{' <' if ours[k] < base[k] else ''}" for k in kinds]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(results: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = ["| window | detector | detection rate | delay (windows) | false-alarm rate |"]
    lines.append("|---|---|---|---|---|")
    for size in SIZES:
        for row in ROWS:
            r = results[size][row]
            delay = "-" if r["mean_delay_windows"] is None else f"{r['mean_delay_windows']:.2f}"
            lines.append(
                f"| {size} | {row} | {r['detection_rate']:.3f} | {delay} | "
                f"{r['false_alarm_rate']:.3f} |"
            )
    return "\n".join(lines)


def run() -> BenchResult:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    started = time.perf_counter()
    raw: dict[int, dict[str, Any]] = {
        s: {"clean": defaultdict(list), "shifted": defaultdict(list), "delays": defaultdict(list)}
        for s in SIZES
    }
    accuracies = []
    with threadpool_limits(limits=1):  # small matrix products: threads only contend
        for seed in WORLDS:
            world = build_world(seed)
            accuracies.append(world.accuracy)
            for size in SIZES:
                run_size(world, size, seed=seed, into=raw[size])
    results = {size: summarise(raw[size]) for size in SIZES}
    ours = float(np.mean([results[s]["ours"]["detection_rate"] for s in SIZES]))
    base = float(np.mean([results[s]["bbsd_ks"]["detection_rate"] for s in SIZES]))
    beats = {
        s: results[s]["ours"]["detection_rate"] >= results[s]["bbsd_ks"]["detection_rate"]
        for s in SIZES
    }
    beats_kind = {
        f"{s}/{k}": v >= results[s]["bbsd_ks"]["per_kind"][k]
        for s in SIZES
        for k, v in results[s]["ours"]["per_kind"].items()
    }
    far_ok = {}
    for s in SIZES:
        for row in ROWS:
            r = results[s][row]
            budget = ALPHA + 2.5 * math.sqrt(ALPHA * (1 - ALPHA) / r["clean_windows"])
            far_ok[f"{s}/{row}"] = r["false_alarm_rate"] <= budget
    png = _plot(results)
    text = table(results)
    kinds = kind_table(results)
    print(text)
    print(kinds)
    return BenchResult(
        name="drift",
        baseline="BBSD-KS (KS per softmax output, Bonferroni) mean detection rate",
        ratio=ours / base if base else math.inf,
        target=(
            ">= BBSD-KS at every window size and on every shift kind per size, "
            "false-alarm rate within budget"
        ),
        met=all(beats.values()) and all(beats_kind.values()) and all(far_ok.values()),
        details={
            "alpha": ALPHA,
            "sizes": list(SIZES),
            "streams_per_shift": STREAMS,
            "no_shift_streams": NO_SHIFT_STREAMS,
            "windows_before_onset": PRE,
            "windows_after_onset": POST,
            "worlds": list(WORLDS),
            "reference_accuracy": accuracies,
            "ours_mean_detection_rate": ours,
            "bbsd_ks_mean_detection_rate": base,
            "ours_beats_baseline": {str(s): v for s, v in beats.items()},
            "ours_beats_baseline_per_kind": beats_kind,
            "false_alarm_within_budget": far_ok,
            "results": {str(s): results[s] for s in SIZES},
            "table": text,
            "kind_table": kinds,
            "plot": png,
            "seconds": time.perf_counter() - started,
        },
    )
