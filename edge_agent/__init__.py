"""The device side of edgeloop: MQTT session, verified bundles, A/B slots, runtimes,
inference API, telemetry with store-and-forward.

This package never imports ``hub`` or ``torch``: ``pip install edgeloop[agent]`` is enough.
"""

from typing import TYPE_CHECKING, Any

from edge_agent._acktimeout import AckTimeout
from edge_agent._predictor import Prediction, Predictor, ShadowReport
from edge_agent._runtime import (
    HealthReport,
    LoadedModel,
    check_slot,
    choose_variant,
    health_check,
    load_slot,
)
from edge_agent.batch import BatchSummary, predict_batch
from edge_agent.errors import (
    AgentError,
    AgentSettingsError,
    BatchError,
    DownloadError,
    EnrollError,
    ModelLoadError,
    NoModelLoaded,
    NoUsableVariant,
    PredictionError,
    RotationRefused,
    SlotError,
)
from edge_agent.settings import AgentSettings

if TYPE_CHECKING:
    from edge_agent.agent import Agent

__all__ = [
    "AckTimeout",
    "Agent",
    "AgentError",
    "AgentSettings",
    "AgentSettingsError",
    "BatchError",
    "BatchSummary",
    "DownloadError",
    "EnrollError",
    "HealthReport",
    "LoadedModel",
    "ModelLoadError",
    "NoModelLoaded",
    "NoUsableVariant",
    "Prediction",
    "PredictionError",
    "Predictor",
    "RotationRefused",
    "ShadowReport",
    "SlotError",
    "check_slot",
    "choose_variant",
    "health_check",
    "load_slot",
    "predict_batch",
]


def __getattr__(name: str) -> Any:
    """``edge_agent.Agent`` loads the agent (MQTT, gRPC, HTTP) on first use, so importing
    the package for its settings or errors stays cheap."""
    if name == "Agent":
        from edge_agent.agent import Agent

        return Agent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
