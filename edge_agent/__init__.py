"""The device side of edgeloop: MQTT session, verified bundles, A/B slots, runtimes,
inference API, telemetry with store-and-forward.

This package never imports ``hub`` or ``torch``: ``pip install edgeloop[agent]`` is enough.
"""

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

__all__ = [
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
