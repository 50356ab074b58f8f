"""The device side of edgeloop: MQTT session, verified bundles, A/B slots, runtimes,
inference API, telemetry with store-and-forward.

This package never imports ``hub`` or ``torch``: ``pip install edgeloop[agent]`` is enough.
"""

from edge_agent._predictor import (
    NoModelLoaded,
    Prediction,
    PredictionError,
    Predictor,
    ShadowReport,
)
from edge_agent._runtime import (
    HealthReport,
    LoadedModel,
    ModelLoadError,
    NoUsableVariant,
    check_slot,
    choose_variant,
    health_check,
    load_slot,
)
from edge_agent.batch import BatchSummary, predict_batch
from edge_agent.settings import AgentSettings, AgentSettingsError

__all__ = [
    "AgentSettings",
    "AgentSettingsError",
    "BatchSummary",
    "HealthReport",
    "LoadedModel",
    "ModelLoadError",
    "NoModelLoaded",
    "NoUsableVariant",
    "Prediction",
    "PredictionError",
    "Predictor",
    "ShadowReport",
    "check_slot",
    "choose_variant",
    "health_check",
    "load_slot",
    "predict_batch",
]
