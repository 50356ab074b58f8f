"""The health check a loaded slot must pass before it serves: the bundle's self-test records
within the manifest's tolerance, then batch-1 latency under its budget. Needs only the model
types (:mod:`edge_agent._model`); :mod:`edge_agent._runtime` re-exports :class:`HealthReport`
and :func:`health_check`."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np

from edge_agent._model import LoadedModel

LATENCY_RUNS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """``max_abs_diff`` and ``latency_ms`` are NaN where the check stopped before them."""

    ok: bool
    reason: str
    max_abs_diff: float = math.nan
    latency_ms: float = math.nan


def _tolerance(model: LoadedModel) -> float:
    spec = model.manifest.get("self_test") or {}
    atol = float(spec.get("atol", 1e-3))
    if model.variant.get("precision") == "int8":  # the int8 kernels differ between CPUs
        return float(spec.get("int8_atol", atol))
    return atol


def _batch1_latency_ms(model: LoadedModel, record: np.ndarray, runs: int) -> float:
    run, apply = model.runtime.run, model.preprocess.apply
    run(apply(record))  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(apply(record))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def health_check(
    model: LoadedModel, *, check_latency: bool = True, runs: int = LATENCY_RUNS
) -> HealthReport:
    """Self-test outputs within the manifest's tolerance and batch-1 latency (median of
    ``runs``, preprocess included) under ``latency_budget_ms``. Never raises."""
    try:
        return _health_check(model, check_latency=check_latency, runs=runs)
    except Exception as exc:  # e.g. a manifest with a malformed tolerance or budget
        return HealthReport(ok=False, reason=f"health check failed: {type(exc).__name__}: {exc}")


def _health_check(model: LoadedModel, *, check_latency: bool, runs: int) -> HealthReport:
    try:
        spec = model.manifest.get("self_test") or {}
        samples = model.slot_dir / str(spec.get("file", "samples.npz"))
        key = f"expected:{model.variant_file}"
        with np.load(samples, allow_pickle=False) as npz:
            if key not in npz.files:
                return HealthReport(ok=False, reason=f"{samples.name} has no {key!r} array")
            raw = np.asarray(npz[str(spec.get("inputs", "self_test"))])
            expected = np.asarray(npz[key], dtype=np.float32)
        outputs = np.asarray(model.runtime.run(model.preprocess.apply(raw)))
    except Exception as exc:
        return HealthReport(ok=False, reason=f"self-test could not run {model.variant_file}: {exc}")
    if outputs.shape != expected.shape:
        return HealthReport(
            ok=False,
            reason=f"self-test outputs have shape {list(outputs.shape)}, "
            f"expected {list(expected.shape)}",
        )
    if not np.all(np.isfinite(outputs)):
        return HealthReport(ok=False, reason="self-test outputs are not all finite")
    width = outputs.shape[-1] if outputs.ndim >= 2 else 1
    if model.task == "classification" and model.labels and len(model.labels) != width:
        return HealthReport(
            ok=False, reason=f"the manifest names {len(model.labels)} labels for {width} outputs"
        )
    diff = float(np.max(np.abs(outputs.astype(np.float64) - expected))) if expected.size else 0.0
    atol = _tolerance(model)
    if not diff <= atol:
        return HealthReport(
            ok=False,
            reason=f"self-test outputs differ from the bundle's by {diff:.3g}, over the "
            f"tolerance {atol:g} ({model.variant_file})",
            max_abs_diff=diff,
        )
    if not check_latency or not len(raw):
        return HealthReport(ok=True, reason="ok: self-test within tolerance", max_abs_diff=diff)
    try:
        latency = _batch1_latency_ms(model, raw[:1], runs)
    except Exception as exc:
        return HealthReport(ok=False, reason=f"latency check failed: {exc}", max_abs_diff=diff)
    budget = float(model.manifest.get("latency_budget_ms", math.inf))
    if not latency <= budget:
        return HealthReport(
            ok=False,
            reason=f"batch-1 latency {latency:.3g} ms is over the latency budget {budget:g} ms",
            max_abs_diff=diff,
            latency_ms=latency,
        )
    return HealthReport(
        ok=True,
        reason=f"ok: self-test within tolerance {atol:g}, batch-1 latency {latency:.3g} ms "
        f"(budget {budget:g} ms)",
        max_abs_diff=diff,
        latency_ms=latency,
    )
