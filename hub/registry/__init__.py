"""Runs and models: ``tracking`` (training runs, metrics, artifacts) and ``models`` (registered
models, numbered versions, aliases with their history, bundles per version, lineage).
"""

from hub._lazy import submodules

__all__ = ["models", "tracking"]


__getattr__ = submodules(__name__, __all__)
