"""Model specs: built-ins by name, user specs by ``module:Class`` path."""

from __future__ import annotations

import importlib

from hub.core.errors import NotFound
from hub.specs._base import ModelSpec, Task, param_value, standardise
from hub.specs.digits import DigitsCNN, DigitsMLP
from hub.specs.vibration import VibrationAE

BUILTIN_SPECS: dict[str, type[ModelSpec]] = {
    spec.name: spec for spec in (DigitsCNN, DigitsMLP, VibrationAE)
}


class SpecNotFound(NotFound, LookupError):
    pass


def get_spec(name: str) -> ModelSpec:
    """A built-in spec by name, or a user spec given as ``package.module:ClassName``."""
    if name in BUILTIN_SPECS:
        return BUILTIN_SPECS[name]()
    module_name, sep, class_name = name.partition(":")
    if not sep:
        raise SpecNotFound(
            f"unknown model spec {name!r}; built-in: {sorted(BUILTIN_SPECS)}, or give "
            "your own as package.module:ClassName"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise SpecNotFound(f"cannot load model spec {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, ModelSpec)):
        raise SpecNotFound(f"{name!r} is not a ModelSpec subclass")
    return cls()


__all__ = [
    "BUILTIN_SPECS",
    "ModelSpec",
    "SpecNotFound",
    "Task",
    "get_spec",
    "param_value",
    "standardise",
]
