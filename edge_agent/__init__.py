"""The device side of edgeloop: MQTT session, verified bundles, A/B slots, runtimes,
inference API, telemetry with store-and-forward.

This package never imports ``hub`` or ``torch``: ``pip install edgeloop[agent]`` is enough.
"""

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
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
    from edge_agent.agent import Agent
    from edge_agent.batch import BatchSummary, predict_batch
    from edge_agent.settings import AgentSettings

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


# name -> the module that defines it, imported on first use: importing the package (for its
# errors, or ``edge_agent.settings`` for the CLI's help) loads no numpy, onnxruntime or MQTT
_ORIGIN = {
    "AckTimeout": "_acktimeout",
    "Agent": "agent",
    "AgentSettings": "settings",
    "BatchSummary": "batch",
    "HealthReport": "_runtime",
    "LoadedModel": "_runtime",
    "Prediction": "_predictor",
    "Predictor": "_predictor",
    "ShadowReport": "_predictor",
    "check_slot": "_runtime",
    "choose_variant": "_runtime",
    "health_check": "_runtime",
    "load_slot": "_runtime",
    "predict_batch": "batch",
}


def __getattr__(name: str) -> Any:
    """``edge_agent.Predictor`` (and the rest of ``__all__``) loads its module on first use."""
    if name in _ORIGIN:
        return getattr(importlib.import_module(f"edge_agent.{_ORIGIN[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
