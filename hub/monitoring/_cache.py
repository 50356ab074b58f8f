"""Detectors per (model version, scope), built once from the version's reference and cached.

One template list per reference is built with ``detectors.build_detectors`` (its thresholds
are calibrated by bootstrap, so that is the expensive part); every scope gets a
``detectors.scope_copy`` of each: its own per-window state (bytes), the reference's arrays,
kernels and calibration tables shared read-only per version.
Detector state lives in memory: after a restart detectors start fresh, while the partial
windows and cursors in the database carry on. So do the scopes' open windows
(:class:`ScopeStates`), rebuilt from the database when missing.

Eviction (:meth:`DetectorCache.evict`, after each evaluation): a scope with no new rows for
``idle_s`` loses its open window and detector copies (both are rebuilt on its next row;
the drift detectors keep no state across windows, the label detectors' sequential
statistic restarts as after a hub restart); a version with no new rows for ``idle_s``
(retired, rolled back) loses its references and calibrated detectors too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import Session

from hub._lazy import module
from hub.monitoring._reference import VersionReference, load_reference
from hub.monitoring.accuracy import AccuracyCusum
from hub.monitoring.budget import RateMeter

if TYPE_CHECKING:
    from hub.core.artifacts import ArtifactStore
    from hub.monitoring import _windows
    from hub.monitoring._windows import ScopeWindow
else:
    # numpy with the windows, on a version's first evaluation: `monitor status` reads only
    # the cache's sizes (~0.1 s of the CLI's start)
    _windows = module("hub.monitoring._windows")

log = logging.getLogger("edgeloop.monitor")


class Detector(Protocol):
    """What the cache needs of a detector (``hub.monitoring.detectors.Detector`` is one)."""

    name: str
    needs: frozenset[str]

    def update(self, window: Any) -> None: ...
    @property
    def drift_detected(self) -> bool: ...
    @property
    def score(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    @property
    def p_value(self) -> float | None: ...
    def threshold_at(self, false_alarm_rate: float) -> float: ...
    def reset(self) -> None: ...


# the rate detectors are built at under the fleet budget: 20,000 bootstrap replicates;
# each window's own rate comes from the budget (``threshold_at``)
NOMINAL_RATE = 0.0015


@dataclass(frozen=True, kw_only=True)
class DetectorSettings:
    window_size: int
    false_alarm_rate: float  # per scope and window (fixed); under a budget: NOMINAL_RATE
    accuracy_margin: float
    label_window: int
    seed: int = 0
    per_day: float | None = None  # the fleet budget: false alerts per version and day
    aggregate_by_batch: bool = False
    max_window: int = 1000


DetectorFactory = Callable[[VersionReference, DetectorSettings], Sequence[Detector]]


def build_for_reference(ref: VersionReference, settings: DetectorSettings) -> list[Detector]:
    """``detectors.build_detectors`` on the version's reference profile."""
    import numpy as np

    from hub.monitoring.detectors import Reference, build_detectors
    from model_packager.profile import ReferenceProfile

    reference = Reference.from_profile(
        ReferenceProfile.model_validate(ref.profile),
        samples=None if ref.samples is None else np.asarray(ref.samples),
        accuracy=ref.accuracy,
    )

    # the setting is family-wise: per scope and window, over all drift detectors
    return list(
        build_detectors(
            reference,
            false_alarm_rate=settings.false_alarm_rate,
            window_size=settings.window_size,
            seed=settings.seed,
            family_wise=True,
            labels=settings.per_day is None,  # the budget runs the Wilson test alone
        )
    )


IDLE_S = 1800.0  # a scope or version this long without rows is evicted from memory


class ScopeStates:
    """The open windows of one version's scopes, when each last saw a row, and the
    version's measured prediction rate (for the fleet budget)."""

    def __init__(self, ref: VersionReference) -> None:
        self.layout = _windows.Layout(ref)
        self.windows: dict[str, ScopeWindow] = {}
        self.used: dict[str, float] = {}
        self.predictions = RateMeter()

    def touch(self, scopes: Iterable[str]) -> None:
        now = time.monotonic()
        for scope in scopes:
            self.used[scope] = now

    def idle(self, before: float) -> list[str]:
        return [s for s, t in self.used.items() if t < before]


class DetectorCache:
    """References and detectors of one hub database; ``lock`` serialises evaluations."""

    def __init__(
        self,
        *,
        factory: DetectorFactory | None = None,
        store: ArtifactStore | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        self._factory = factory or build_for_reference
        self.store = store  # bundles' raw reference rows (MMD) come from here
        self.lock = threading.RLock()
        self.idle_s = idle_s
        self._refs: dict[tuple[str, str, str], VersionReference | None] = {}
        self._templates: dict[tuple[Any, ...], list[Detector]] = {}
        self._scoped: dict[tuple[Any, ...], list[Detector]] = {}
        self._states: dict[tuple[str, ...], ScopeStates] = {}
        self._versions: dict[tuple[str, str], float] = {}  # when each last had rows
        # per stream, the newest row id already looked at for versions without a cursor
        self.discovered: dict[str, int] = {}
        self.retry: set[tuple[str, str]] = set()  # versions whose evaluation failed
        self.labels: dict[tuple[str, str], RateMeter] = {}  # labels per version (budget)
        # devices already in monitor_device per version (so each is written once)
        self.devices: dict[tuple[str, str], set[str]] = {}
        self.last_cycle: dict[str, Any] | None = None  # the latest evaluation: at, seconds
        # where this process left each version's read cursors (stream -> last row id): found
        # elsewhere, another monitor replica evaluated it meanwhile and the open windows in
        # memory are stale
        self.heads: dict[tuple[str, str], dict[str, int]] = {}

    def scope_states(self, ref: VersionReference) -> ScopeStates:
        """The open windows of ``ref``'s scopes (one set per version and bundle)."""
        self._versions[(ref.model, ref.version)] = time.monotonic()
        found = self._states.get(ref.key)
        if found is None:
            found = self._states[ref.key] = ScopeStates(ref)
        return found

    def evict(self, now: float | None = None) -> int:
        """Drop what has been idle for ``idle_s`` (see the module docstring); returns how many
        scopes and versions went."""
        before = (time.monotonic() if now is None else now) - self.idle_s
        gone = 0
        for key, states in self._states.items():
            idle = set(states.idle(before))
            for scope in idle:
                states.windows.pop(scope, None)
                states.used.pop(scope, None)
            if idle:
                self._scoped = {
                    k: v for k, v in self._scoped.items() if not (k[0] == key and k[3] in idle)
                }
                gone += len(idle)
        for model, version in [k for k, t in self._versions.items() if t < before]:
            self.forget(model=model, version=version)
            self._refs = {k: v for k, v in self._refs.items() if k[:2] != (model, version)}
            self._templates = {
                k: v for k, v in self._templates.items() if k[0][:2] != (model, version)
            }
            del self._versions[(model, version)]
            gone += 1
        return gone

    def sizes(self) -> dict[str, int]:
        """What the cache holds: versions, scopes with detectors, open windows."""
        return {
            "versions": len(self._versions),
            "scoped_detectors": len(self._scoped),
            "open_windows": sum(len(s.windows) for s in self._states.values()),
        }

    def reference(
        self, session: Session, *, model: str, version: str, bundle_digest: str = ""
    ) -> VersionReference | None:
        key = (model, version, bundle_digest)
        self._versions[(model, version)] = time.monotonic()
        if key not in self._refs or self._refs[key] is None:  # a bundle may be registered later
            self._refs[key] = load_reference(
                session,
                model=model,
                version=version,
                bundle_digest=bundle_digest,
                store=self.store,
            )
        return self._refs[key]

    def detectors(
        self, ref: VersionReference, settings: DetectorSettings, *, stream: str, scope: str
    ) -> list[Detector]:
        """This scope's detectors for ``stream`` (``telemetry``: everything that does not need
        labels; ``feedback``: what runs on the correctness stream)."""
        key = (ref.key, settings, stream, scope)
        found = self._scoped.get(key)
        if found is None:
            from hub.monitoring.detectors import scope_copy

            found = self._scoped[key] = [
                scope_copy(d) for d in self._template(ref, settings, stream)
            ]
        return found

    def _template(
        self, ref: VersionReference, settings: DetectorSettings, stream: str
    ) -> list[Detector]:
        key = (ref.key, settings, stream)
        if key not in self._templates:
            try:
                every = list(self._factory(ref, settings))
            except Exception:  # a profile the detectors cannot use: no drift tests, say why
                log.exception("building detectors for %s@%s failed", ref.model, ref.version)
                every = []
            drift = [d for d in every if "correct" not in d.needs]
            labels = [d for d in every if "correct" in d.needs]
            if settings.per_day is not None:
                # sequential accuracy detectors are calibrated for one fixed rate per run of
                # labels; under the budget the Wilson test (exact at any rate) runs alone
                labels = []
            elif not labels and ref.accuracy is not None:
                labels = [
                    AccuracyCusum(
                        reference=ref.accuracy,
                        margin=settings.accuracy_margin,
                        false_alarm_rate=settings.false_alarm_rate,
                        arl_labels=settings.label_window,
                    )
                ]
            self._templates[(ref.key, settings, "telemetry")] = drift
            self._templates[(ref.key, settings, "feedback")] = labels
        return self._templates[key]

    def forget(self, *, model: str, version: str) -> None:
        """Drop the detector state and open windows of a version (after a failed, rolled-back
        evaluation: they are rebuilt from what the database kept)."""
        self._scoped = {k: v for k, v in self._scoped.items() if k[0][:2] != (model, version)}
        self._states = {k: v for k, v in self._states.items() if k[:2] != (model, version)}
        self.devices.pop((model, version), None)
        self.heads.pop((model, version), None)


_CACHES: dict[str, DetectorCache] = {}
_CACHES_GUARD = threading.Lock()


def cache_for(url: str, *, store: ArtifactStore | None = None) -> DetectorCache:
    """The process-wide cache of one database (API and loop share it, and its lock); the
    first ``store`` given is where it reads bundles' reference samples."""
    with _CACHES_GUARD:
        cache = _CACHES.setdefault(url, DetectorCache())
        if cache.store is None and store is not None:
            cache.store = store
            # references (and their detectors) built without samples: build them again
            cache._refs.clear()
            cache._templates.clear()
            cache._scoped.clear()
            cache._states.clear()
        return cache
