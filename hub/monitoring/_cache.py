"""Detectors per (model version, scope), built once from the version's reference and cached.

One template list per reference is built with ``detectors.build_detectors`` (its thresholds
are calibrated by bootstrap, so that is the expensive part); every scope gets a
``detectors.scope_copy`` of each: its own per-window state (bytes), the reference's arrays,
kernels and calibration tables shared read-only per version.
Detector state lives in memory: after a restart detectors start fresh, while the partial
windows and cursors in the database carry on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import Session

from hub.monitoring._reference import VersionReference, load_reference
from hub.monitoring.accuracy import AccuracyCusum

if TYPE_CHECKING:
    from hub.artifacts import ArtifactStore

log = logging.getLogger("edgeloop.monitor")


class Detector(Protocol):
    """The interface of ``hub.monitoring.detectors`` (see its ``_base``)."""

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
    def reset(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class DetectorSettings:
    window_size: int
    false_alarm_rate: float
    accuracy_margin: float
    label_window: int
    seed: int = 0


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
        )
    )


class DetectorCache:
    """References and detectors of one hub database; ``lock`` serialises evaluations."""

    def __init__(
        self, *, factory: DetectorFactory | None = None, store: ArtifactStore | None = None
    ) -> None:
        self._factory = factory or build_for_reference
        self.store = store  # bundles' raw reference rows (MMD) come from here
        self.lock = threading.RLock()
        self._refs: dict[tuple[str, str, str], VersionReference | None] = {}
        self._templates: dict[tuple[Any, ...], list[Detector]] = {}
        self._scoped: dict[tuple[Any, ...], list[Detector]] = {}

    def reference(
        self, session: Session, *, model: str, version: str, bundle_digest: str = ""
    ) -> VersionReference | None:
        key = (model, version, bundle_digest)
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
            if not labels and ref.accuracy is not None:
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
        """Drop the detector state of a version (after a failed, rolled-back evaluation)."""
        self._scoped = {k: v for k, v in self._scoped.items() if k[0][:2] != (model, version)}


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
        return cache
