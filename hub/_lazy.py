"""Packages whose surface is their modules load them on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any


def submodules(package: str, names: Sequence[str]) -> Callable[[str], ModuleType]:
    """A module ``__getattr__`` for ``package``: ``package.name`` imports ``package.name``
    when ``name`` is in ``names`` (the package's ``__all__``), so importing the package pulls
    in nothing it does not need (``from hub.core import errors`` stays light)."""

    def load(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return load


def attributes(package: str, origin: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``package.name`` is ``name`` from the
    submodule ``origin[name]``, imported on first use (so ``from hub.datasets import service``
    does not load pandas and scipy for the record sources and the drift checks)."""

    def load(name: str) -> object:
        if name in origin:
            return getattr(importlib.import_module(f"{package}.{origin[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return load


class _Module:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def module(name: str) -> Any:
    """A stand-in for ``import name`` that imports it on first attribute use: for a heavy
    dependency one function of a light module needs (``pd = module("pandas")`` under ``if not
    TYPE_CHECKING``, ``import pandas as pd`` for the type checker)."""
    return _Module(name)
