"""Runs and models: ``tracking`` (training runs, metrics, artifacts) and ``models`` (registered
models, numbered versions, aliases with their history, bundles per version, lineage).
"""

from hub.registry import models, tracking

__all__ = ["models", "tracking"]
