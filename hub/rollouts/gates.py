"""ML-health gates: is the candidate at least as good on the devices as what it replaces?

Each gate returns a :class:`GateResult` with its value, the baseline it was compared with,
the threshold, whether it passed, and ``insufficient_data`` when there was too little to
judge. A gate with insufficient data passes unless its name is in ``require_data``.

Inputs are what the ingest stores (``hub.tables.fleet``) and monitoring's ``Alert`` rows:

- ``install_failure_rate``: failed / (healthy + failed) over the devices commanded so far;
- ``error_rate``: on-device errors / predictions of the candidate, against the previous
  version(s) the rollout's devices ran (over the fleet, last ``baseline_lookback_s``);
- ``latency_p95``: from the merged latency histograms, candidate vs previous;
- ``accuracy``: label feedback (label == predicted label), candidate vs previous, leaving out
  labels whose source record is in the training split of either (``TrainedSplits``) and labels
  of devices in label quarantine (``hub.triggers.label_quality``);
- ``shadow_agreement``: agreed / compared of windows that shadowed the candidate;
- ``drift``: open drift alerts for the candidate version.

Promotion evidence (:func:`promotion_evidence`): which gates of the final evaluation had
data. The rollout moves its ``promote_alias`` only when the gates named in
``promotion_evidence`` had data (default: ``error_rate``, and ``accuracy`` where label
feedback flows for the rollout's devices), unless ``promote_unverified`` is set; the move is
recorded as verified or not (docs/ROLLOUTS.md, "Promotion").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlmodel import Session, col, select

from hub.tables import (
    Alert,
    DatasetVersion,
    FeedbackLabelRow,
    LabelQuarantine,
    TelemetryWindowRow,
)
from hub.tables.registry import ModelVersion, TrainingRun
from hub.tables.rollouts import DeviceState, Rollout

DEFAULT_GATES: dict[str, Any] = {
    "max_install_failure_rate": 0.0,
    "max_error_rate": 0.05,  # absolute ceiling when there is no baseline
    "max_error_rate_increase": 0.02,  # absolute points over the baseline
    "max_latency_p95_increase": 0.5,  # relative to the baseline p95
    "max_accuracy_drop": 0.02,  # absolute (0.02 = two points)
    "min_shadow_agreement": 0.9,
    "max_drift_alerts": 0,
    "min_predictions": 20,
    "min_labels": 20,
    "baseline_lookback_s": 3600.0,
    # ISO 8601 time the baselines start at, at the latest (None: the lookback alone). A
    # retrain for a drift incident sets it to the incident's start: the previous version's
    # accuracy on yesterday's inputs is not what it scores on today's.
    "baseline_since": None,
    "require_data": [],
    # the gates whose data a promotion needs to count as verified; the rollout moves its
    # promote_alias only then, unless promote_unverified (see promotion_evidence)
    "promotion_evidence": ["error_rate", "accuracy_where_labelled"],
    "promote_unverified": False,
}
#: Gates that can lack data (``drift`` always has its count of alerts).
DATA_GATES = ("install_failure_rate", "error_rate", "latency_p95", "accuracy", "shadow_agreement")
#: In ``promotion_evidence``: the accuracy gate's data is needed where labels flow (label
#: feedback for the model from the rollout's devices), not otherwise.
WHERE_LABELLED = "accuracy_where_labelled"


@dataclass(frozen=True, kw_only=True)
class GateResult:
    name: str
    value: float | None
    threshold: float
    passed: bool
    insufficient_data: bool = False
    baseline: float | None = None
    samples: int = 0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeviceRow(Protocol):
    """What the gates read of a rollout's device row (a ``RolloutDevice`` or the
    controller's lighter view of a settled one)."""

    @property
    def device_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def previous_model(self) -> str: ...
    @property
    def previous_version(self) -> str: ...


def merged_gates(overrides: dict[str, Any] | None) -> dict[str, Any]:
    from hub.core.errors import InvalidInput

    unknown = set(overrides or {}) - set(DEFAULT_GATES)
    if unknown:
        raise InvalidInput(
            f"unknown gate settings {sorted(unknown)}; known: {sorted(DEFAULT_GATES)}"
        )
    merged = {**DEFAULT_GATES, **(overrides or {})}
    evidence = merged["promotion_evidence"]
    known = {*DATA_GATES, WHERE_LABELLED}
    if (
        not isinstance(evidence, list)
        or not evidence
        or not all(isinstance(g, str) and g in known for g in evidence)
    ):
        raise InvalidInput(
            f"promotion_evidence must be a non-empty list of {sorted(known)}; got {evidence!r} "
            '(to promote without evidence set "promote_unverified": true)'
        )
    if not isinstance(merged["promote_unverified"], bool):
        raise InvalidInput(
            f"promote_unverified must be true or false; got {merged['promote_unverified']!r}"
        )
    if merged["baseline_since"] is not None:
        try:
            _parse_since(merged["baseline_since"])
        except (TypeError, ValueError):
            raise InvalidInput(
                "baseline_since must be an ISO 8601 time with a timezone, e.g. "
                f"2026-12-07T06:30:00+00:00; got {merged['baseline_since']!r}"
            ) from None
    return merged


def _parse_since(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError(value)
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(value)
    return at.astimezone(UTC)


def baseline_start(now: datetime, cfg: Mapping[str, Any]) -> datetime:
    """Where the baselines begin: ``baseline_lookback_s`` before ``now``, or the later
    ``baseline_since`` (in ``now``'s form: naive UTC, as SQLite hands times back, or aware)."""
    start = now - timedelta(seconds=float(cfg["baseline_lookback_s"]))
    if cfg.get("baseline_since") is None:
        return start
    since = _parse_since(cfg["baseline_since"])
    if now.tzinfo is None:
        since = since.replace(tzinfo=None)
    return max(start, since)


def _insufficient(name: str, *, threshold: float, cfg: dict[str, Any], detail: str) -> GateResult:
    blocking = name in cfg["require_data"]
    return GateResult(
        name=name,
        value=None,
        threshold=threshold,
        passed=not blocking,
        insufficient_data=True,
        detail=detail + ("; data is required for this gate" if blocking else ""),
    )


def install_failure_rate(devices: Sequence[DeviceRow], cfg: dict[str, Any]) -> GateResult:
    threshold = float(cfg["max_install_failure_rate"])
    failed = sum(d.state == DeviceState.FAILED for d in devices)
    healthy = sum(d.state == DeviceState.HEALTHY for d in devices)
    if failed + healthy == 0:
        return _insufficient(
            "install_failure_rate", threshold=threshold, cfg=cfg, detail="no device reported yet"
        )
    rate = failed / (failed + healthy)
    return GateResult(
        name="install_failure_rate",
        value=rate,
        threshold=threshold,
        passed=rate <= threshold,
        samples=failed + healthy,
        detail=f"{failed} failed, {healthy} healthy",
    )


def p95(histograms: Iterable[Mapping[str, Any]]) -> float | None:
    """The 95th percentile over histograms (each ``{"edges", "counts"}``), bin upper edges."""
    points: list[tuple[float, int]] = []
    for hist in histograms:
        edges, counts = list(hist.get("edges") or []), list(hist.get("counts") or [])
        if not edges or len(counts) != len(edges) + 1:
            continue
        for i, n in enumerate(counts):
            if n:
                points.append((float(edges[min(i, len(edges) - 1)]), int(n)))
    total = sum(n for _, n in points)
    if total == 0:
        return None
    seen = 0
    for value, n in sorted(points):
        seen += n
        if seen >= 0.95 * total:
            return value
    return sorted(points)[-1][0]  # pragma: no cover - the loop always returns


@dataclass(frozen=True, slots=True)
class _Telemetry:
    """What the telemetry gates need of a set of windows: totals and latency histograms."""

    count: int = 0
    errors: int = 0
    latency: tuple[Mapping[str, Any], ...] = ()


def _windows(
    session: Session, *, model: str, versions: set[str], devices: set[str] | None, since: datetime
) -> _Telemetry:
    """Only the columns the gates read: a window's other JSON columns (feature sketches,
    confidence, output counts) are most of its bytes, and decoding them for thousands of
    windows held the controller's transaction open for tens of seconds."""
    if not versions:
        return _Telemetry()
    query = select(
        TelemetryWindowRow.count, TelemetryWindowRow.errors, TelemetryWindowRow.latency
    ).where(
        TelemetryWindowRow.model == model,
        col(TelemetryWindowRow.version).in_(versions),
        TelemetryWindowRow.window_end >= since,
    )
    if devices is not None:
        query = query.where(col(TelemetryWindowRow.device_id).in_(devices))
    rows = session.exec(query).all()
    return _Telemetry(
        count=sum(int(c or 0) for c, _, _ in rows),
        errors=sum(int(e or 0) for _, e, _ in rows),
        latency=tuple(h for _, _, h in rows if h),
    )


@dataclass(frozen=True, kw_only=True)
class Scope:
    """What the gates look at: the candidate, the devices, and the previous versions."""

    rollout: Rollout
    devices: Sequence[DeviceRow]
    since: datetime
    now: datetime

    @property
    def device_ids(self) -> set[str]:
        return {d.device_id for d in self.devices}

    @property
    def previous_versions(self) -> set[str]:
        model = self.rollout.model
        return {
            d.previous_version
            for d in self.devices
            if d.previous_model == model
            and d.previous_version
            and d.previous_version != self.rollout.version
        }


def telemetry_gates(session: Session, scope: Scope, cfg: dict[str, Any]) -> list[GateResult]:
    r = scope.rollout
    cand = _windows(
        session, model=r.model, versions={r.version}, devices=scope.device_ids, since=scope.since
    )
    lookback = baseline_start(scope.now, cfg)
    base = _windows(
        session, model=r.model, versions=scope.previous_versions, devices=None, since=lookback
    )
    n_c, e_c = cand.count, cand.errors
    n_b, e_b = base.count, base.errors
    min_n = int(cfg["min_predictions"])
    results: list[GateResult] = []
    if n_c < min_n:
        why = f"{n_c} candidate predictions (< {min_n})"
        results.append(
            _insufficient("error_rate", threshold=cfg["max_error_rate"], cfg=cfg, detail=why)
        )
        results.append(
            _insufficient(
                "latency_p95", threshold=cfg["max_latency_p95_increase"], cfg=cfg, detail=why
            )
        )
        return results
    rate_c = e_c / n_c
    rate_b = e_b / n_b if n_b >= min_n else None
    limit = (
        float(cfg["max_error_rate"])
        if rate_b is None
        else rate_b + float(cfg["max_error_rate_increase"])
    )
    results.append(
        GateResult(
            name="error_rate",
            value=rate_c,
            baseline=rate_b,
            threshold=limit,
            passed=rate_c <= limit,
            samples=n_c,
            detail=f"{e_c} errors in {n_c} predictions"
            + ("" if rate_b is not None else "; no baseline, absolute ceiling"),
        )
    )
    lat_c = p95(cand.latency)
    lat_b = p95(base.latency) if n_b >= min_n else None
    if lat_c is None or lat_b is None:
        results.append(
            _insufficient(
                "latency_p95",
                threshold=float(cfg["max_latency_p95_increase"]),
                cfg=cfg,
                detail="no latency baseline from the previous version",
            )
        )
    else:
        limit_ms = lat_b * (1 + float(cfg["max_latency_p95_increase"]))
        results.append(
            GateResult(
                name="latency_p95",
                value=lat_c,
                baseline=lat_b,
                threshold=limit_ms,
                passed=lat_c <= limit_ms,
                samples=n_c,
                detail="ms, from latency histograms",
            )
        )
    return results


@dataclass(frozen=True)
class TrainedSplits:
    """The training splits of some model versions, by the stable split rule: a labelled input
    whose source record falls in one of them was (or could have been) trained on, so the
    accuracy gate never scores it (``Label.source``; inputs without a source are scored)."""

    splits: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]  # (dataset name, fractions)

    @classmethod
    def of(cls, session: Session, *, model: str, versions: Iterable[str]) -> TrainedSplits:
        numbers = [int(v) for v in versions if str(v).isdigit()]
        if not numbers:
            return cls(())
        found = session.exec(
            select(DatasetVersion.name, DatasetVersion.split_fractions)
            .join(TrainingRun, col(TrainingRun.dataset_version_id) == col(DatasetVersion.id))
            .join(ModelVersion, col(ModelVersion.run_id) == col(TrainingRun.id))
            .where(ModelVersion.model_name == model, col(ModelVersion.version).in_(numbers))
        ).all()
        return cls(tuple(sorted({(n, tuple(dict(f).items())) for n, f in found})))

    def trained(self, source: str | None) -> bool:
        from hub.datasets.splits import split_of  # numpy: only where labels name a source

        return bool(source) and any(
            split_of(str(source), fractions=dict(fractions), salt=name) == "train"
            for name, fractions in self.splits
        )


def _accuracy(
    session: Session,
    *,
    model: str,
    versions: set[str],
    since: datetime,
    devices: set[str] | None = None,
    trained: TrainedSplits | None = None,
) -> tuple[float | None, int]:
    if not versions:
        return None, 0
    query = select(
        FeedbackLabelRow.label, FeedbackLabelRow.predicted_label, FeedbackLabelRow.source
    ).where(
        FeedbackLabelRow.model == model,
        col(FeedbackLabelRow.version).in_(versions),
        FeedbackLabelRow.at >= since,
        col(FeedbackLabelRow.label).is_not(None),
        col(FeedbackLabelRow.predicted_label).is_not(None),
    )
    if devices is not None:
        query = query.where(col(FeedbackLabelRow.device_id).in_(devices))
    query = query.where(col(FeedbackLabelRow.device_id).not_in(_quarantined(session, model)))
    rows = [
        (label, pred)
        for label, pred, source in session.exec(query).all()
        if trained is None or not trained.trained(source)
    ]
    if not rows:
        return None, 0
    return sum(label == pred for label, pred in rows) / len(rows), len(rows)


def _quarantined(session: Session, model: str) -> list[str]:
    """Devices whose labels for ``model`` are quarantined (``hub.triggers.label_quality``)."""
    return list(
        session.exec(
            select(LabelQuarantine.device_id).where(
                LabelQuarantine.model == model, col(LabelQuarantine.active).is_(True)
            )
        ).all()
    )


def quality_gates(session: Session, scope: Scope, cfg: dict[str, Any]) -> list[GateResult]:
    r = scope.rollout
    min_labels = int(cfg["min_labels"])
    drop = float(cfg["max_accuracy_drop"])
    # candidate and baseline are scored on the same kind of inputs: none from a source in the
    # training split of either (no model is judged on what it was trained on)
    trained = TrainedSplits.of(
        session, model=r.model, versions={r.version, *scope.previous_versions}
    )
    acc_c, n_c = _accuracy(
        session, model=r.model, versions={r.version}, since=scope.since, trained=trained
    )
    lookback = baseline_start(scope.now, cfg)
    # the baseline is the previous version on the *same devices*: a canary on a few devices
    # must not be judged against a fleet whose data (and drift) differs from theirs
    acc_b, n_b = _accuracy(
        session,
        model=r.model,
        versions=scope.previous_versions,
        since=lookback,
        devices=scope.device_ids,
        trained=trained,
    )
    results: list[GateResult] = []
    if acc_c is None or acc_b is None or n_c < min_labels or n_b < min_labels:
        results.append(
            _insufficient(
                "accuracy",
                threshold=drop,
                cfg=cfg,
                detail=f"{n_c} candidate / {n_b} baseline labels (need {min_labels} each)",
            )
        )
    else:
        results.append(
            GateResult(
                name="accuracy",
                value=acc_c,
                baseline=acc_b,
                threshold=acc_b - drop,
                passed=acc_c >= acc_b - drop,
                samples=n_c,
                detail=f"label feedback: {n_c} candidate, {n_b} baseline labels",
            )
        )
    shadows = [
        shadow
        for shadow in session.exec(
            select(TelemetryWindowRow.shadow).where(
                TelemetryWindowRow.model == r.model, TelemetryWindowRow.window_end >= scope.since
            )
        ).all()
        if shadow and str(shadow.get("version", "")) == r.version
    ]
    compared = sum(int(s.get("compared", 0)) for s in shadows)
    agreed = sum(int(s.get("agreed", 0)) for s in shadows)
    # a rollout with a shadow phase judged agreement there: the same floor applies later
    floor = float((r.shadow or {}).get("min_agreement", cfg["min_shadow_agreement"]))
    if compared < int(cfg["min_predictions"]):
        results.append(
            _insufficient(
                "shadow_agreement", threshold=floor, cfg=cfg, detail=f"{compared} compared"
            )
        )
    else:
        results.append(
            GateResult(
                name="shadow_agreement",
                value=agreed / compared,
                threshold=floor,
                passed=agreed / compared >= floor,
                samples=compared,
            )
        )
    return results


def drift_gate(session: Session, scope: Scope, cfg: dict[str, Any]) -> GateResult:
    r = scope.rollout
    alerts = session.exec(
        select(Alert).where(
            Alert.kind == "drift",
            Alert.model == r.model,
            Alert.version == r.version,
            col(Alert.resolved_at).is_(None),
            Alert.at >= scope.since,
        )
    ).all()
    limit = int(cfg["max_drift_alerts"])
    return GateResult(
        name="drift",
        value=float(len(alerts)),
        threshold=float(limit),
        passed=len(alerts) <= limit,
        samples=len(alerts),
        detail=", ".join(sorted({a.scope for a in alerts}))[:200],
    )


def evaluate(session: Session, scope: Scope, cfg: dict[str, Any]) -> list[GateResult]:
    """Every gate for ``scope``; the phase passes when all results have ``passed``."""
    return [
        install_failure_rate(scope.devices, cfg),
        *telemetry_gates(session, scope, cfg),
        *quality_gates(session, scope, cfg),
        drift_gate(session, scope, cfg),
    ]


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """What a promotion rests on: each gate's outcome in the final evaluation (``passed``,
    ``failed`` or ``insufficient``), the gates whose data was required (``promotion_evidence``
    resolved: ``accuracy`` only where labels flow), and those that lacked it."""

    gates: dict[str, str]
    required: tuple[str, ...]
    labels_flow: bool
    previous_versions: tuple[str, ...] = ()

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(
            g for g in self.required if self.gates.get(g, "insufficient") == "insufficient"
        )

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(g for g, state in self.gates.items() if state == "failed")

    @property
    def verified(self) -> bool:
        return not self.missing and not self.failed

    @property
    def insufficient(self) -> tuple[str, ...]:
        return tuple(g for g, state in self.gates.items() if state == "insufficient")

    def why(self) -> str:
        """One line: what the gates had (and lacked)."""
        parts = []
        if self.missing:
            parts.append(f"no data for {', '.join(self.missing)}")
        if self.failed:
            parts.append(f"failing now: {', '.join(self.failed)}")
        with_data = [g for g, state in self.gates.items() if state == "passed" and g in DATA_GATES]
        parts.append(f"gates with data: {', '.join(with_data) or 'none'}")
        if self.insufficient:
            parts.append(f"insufficient: {', '.join(self.insufficient)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "gates": dict(self.gates),
            "required": list(self.required),
            "missing": list(self.missing),
            "failed": list(self.failed),
            "labels_flow": self.labels_flow,
            "previous_versions": list(self.previous_versions),
        }


def labels_flow(session: Session, scope: Scope, cfg: Mapping[str, Any]) -> bool:
    """Whether label feedback for the rollout's model comes from its devices: any label since
    the rollout started or the accuracy baseline's window began (the earlier), devices in
    label quarantine left out (their labels never count)."""
    r = scope.rollout
    since = min(scope.since, baseline_start(scope.now, cfg))
    found = session.exec(
        select(FeedbackLabelRow.id)
        .where(
            FeedbackLabelRow.model == r.model,
            col(FeedbackLabelRow.device_id).in_(scope.device_ids),
            col(FeedbackLabelRow.device_id).not_in(_quarantined(session, r.model)),
            FeedbackLabelRow.at >= since,
            col(FeedbackLabelRow.label).is_not(None),
        )
        .limit(1)
    ).first()
    return found is not None


def promotion_evidence(
    session: Session, scope: Scope, cfg: Mapping[str, Any], results: Sequence[GateResult]
) -> Evidence:
    """The evidence ``results`` (an evaluation over ``scope``) give a promotion.

    ``accuracy_where_labelled`` needs the accuracy gate's data where labels flow from the
    rollout's devices *and* they ran a previous version of the model: a first deployment has
    nothing for the gate to compare with (it can never have data), so there the other
    required gates are the evidence (``previous_versions`` is empty in the record)."""
    flow = labels_flow(session, scope, cfg)
    previous = tuple(sorted(scope.previous_versions))
    required: list[str] = []
    for name in cfg["promotion_evidence"]:
        gate = "accuracy" if name == WHERE_LABELLED else name
        if (name != WHERE_LABELLED or (flow and previous)) and gate not in required:
            required.append(gate)
    return Evidence(
        gates={
            g.name: "insufficient" if g.insufficient_data else ("passed" if g.passed else "failed")
            for g in results
        },
        required=tuple(required),
        labels_flow=flow,
        previous_versions=previous,
    )
