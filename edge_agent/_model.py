"""The leaf types of a loaded model: the :class:`Runtime` interface every runtime implements
and :class:`LoadedModel`, a slot ready to serve. Plain types that import nothing of the
package: :mod:`edge_agent._runtime` (loading), :mod:`edge_agent._runtime_health` (the
health check), the predictor and the agent all build on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from model_packager.preprocess import Preprocess

__all__ = ["LoadedModel", "Runtime"]


@runtime_checkable
class Runtime(Protocol):
    """Runs a batch of preprocessed float32 model inputs; returns the float32 outputs."""

    name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """A loaded slot: its manifest, the chosen variant, the runtime and the transform."""

    slot_dir: Path
    manifest: dict[str, Any]
    variant: dict[str, Any]
    runtime: Runtime
    preprocess: Preprocess
    labels: tuple[str, ...] | None
    task: str

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", ""))

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def variant_file(self) -> str:
        return str(self.variant["file"])

    @property
    def anomaly_threshold(self) -> float | None:
        """The reference split's p99 reconstruction error (reconstruction models), if any."""
        profile = self.manifest.get("reference_profile") or {}
        value = ((profile.get("output") or {}).get("score_quantiles") or {}).get("p99")
        return None if value is None else float(value)
