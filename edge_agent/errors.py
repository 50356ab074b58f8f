"""Every exception the edge agent raises, under one root: :class:`AgentError`.

``except AgentError`` catches anything the agent refuses or fails at. Each error keeps the
built-in base it had before the root existed (``ValueError`` for bad settings,
``RuntimeError`` for load, prediction, batch and enrolment failures), so code that catches
those still does. The modules that raise them re-export them: ``edge_agent.settings``,
``edge_agent.enroll``, ``edge_agent.batch`` and the package itself.

This module imports nothing: every other module of the package may import it.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AgentSettingsError",
    "BatchError",
    "DownloadError",
    "EnrollError",
    "ModelLoadError",
    "NoModelLoaded",
    "NoUsableVariant",
    "PredictionError",
    "RotationRefused",
    "SlotError",
]


class AgentError(Exception):
    """The root of the edge agent's exceptions."""


class AgentSettingsError(AgentError, ValueError):
    """Settings that are missing or unsafe; the message says what to set."""


# models and predictions ----------------------------------------------------------------


class ModelLoadError(AgentError, RuntimeError):
    """A slot could not be loaded: missing/corrupt files, a bad manifest, a runtime error."""


class NoUsableVariant(ModelLoadError):
    """None of the preferred variants is both in the bundle and runnable on this device."""


class PredictionError(AgentError, RuntimeError):
    """The runtime failed on a batch (counted in ``PredictorStats.errors``)."""


class NoModelLoaded(AgentError, RuntimeError):
    """No model is active yet (the HTTP endpoint answers 503)."""


class BatchError(AgentError, RuntimeError):
    """The bundle verified but its model cannot be trusted here (self-test failed)."""


# deployments ---------------------------------------------------------------------------


class DownloadError(AgentError):
    """The artifact could not be downloaded; ``reason`` is a short machine-readable tag.

    Reasons: ``invalid_digest``, ``not_found``, ``invalid_argument``, ``size_mismatch``,
    ``digest_mismatch``, ``disk_full``, ``busy`` (another download of the same digest
    holds the partial file), ``retries_exhausted``, ``rpc_error``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SlotError(AgentError):
    """A slot operation that cannot be done (unknown slot, empty or failed slot, ...)."""


class RotationRefused(AgentError):
    """A ``RotateKey`` the agent did not act on; the message says why."""


# enrolment -----------------------------------------------------------------------------


class EnrollError(AgentError, RuntimeError):
    """The hub refused the enrolment or could not be reached; ``code`` is the gRPC status."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
