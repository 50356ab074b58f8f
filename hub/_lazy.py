"""Packages whose surface is their modules load them on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType


def submodules(package: str, names: Sequence[str]) -> Callable[[str], ModuleType]:
    """A module ``__getattr__`` for ``package``: ``package.name`` imports ``package.name``
    when ``name`` is in ``names`` (the package's ``__all__``), so importing the package pulls
    in nothing it does not need (``from hub.core import errors`` stays light)."""

    def load(name: str) -> ModuleType:
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return load
