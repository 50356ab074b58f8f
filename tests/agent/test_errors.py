"""The edge agent's exceptions keep the built-in bases their callers catch (that every one
derives from AgentError is checked for each package in tests/test_house_rules.py)."""

from __future__ import annotations

import pytest

import edge_agent
from edge_agent import errors


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.AgentSettingsError, ValueError),
        (errors.ModelLoadError, RuntimeError),
        (errors.NoUsableVariant, RuntimeError),
        (errors.PredictionError, RuntimeError),
        (errors.NoModelLoaded, RuntimeError),
        (errors.BatchError, RuntimeError),
        (errors.EnrollError, RuntimeError),
    ],
)
def test_errors_keep_the_builtin_base_callers_catch(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, errors.AgentError) and issubclass(error, builtin)


def test_errors_are_importable_where_they_were_raised_before() -> None:
    from edge_agent import (
        _fetch,
        _prediction,
        _predictor,
        _runtime,
        _slots,
        _trust,
        batch,
        enroll,
        settings,
    )

    assert settings.AgentSettingsError is errors.AgentSettingsError
    assert _runtime.ModelLoadError is errors.ModelLoadError
    assert _runtime.NoUsableVariant is errors.NoUsableVariant
    assert _prediction.PredictionError is _predictor.PredictionError is errors.PredictionError
    assert _prediction.NoModelLoaded is _predictor.NoModelLoaded is errors.NoModelLoaded
    assert batch.BatchError is errors.BatchError
    assert enroll.EnrollError is errors.EnrollError
    assert _fetch.DownloadError is errors.DownloadError
    assert _slots.SlotError is errors.SlotError
    assert _trust.RotationRefused is errors.RotationRefused
    assert set(errors.__all__) <= set(edge_agent.__all__)
