"""One exception root for the edge agent: every exception class it defines is an AgentError,
and each keeps the built-in base its callers catch."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import edge_agent
from edge_agent import errors


def _modules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages(edge_agent.__path__, prefix="edge_agent.")]


def test_every_exception_of_the_package_derives_from_agent_error() -> None:
    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, BaseException)
                and cls.__module__.startswith("edge_agent")
                and not issubclass(cls, errors.AgentError)
            ):
                strays.append(f"{cls.__module__}.{cls.__qualname__}")
    assert not strays, strays


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
