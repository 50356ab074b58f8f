"""One router per resource (each module's ``router``, with its prefix and response models)."""

__all__ = [
    "bundles",
    "datasets",
    "devices",
    "ingest",
    "keys",
    "models",
    "monitor",
    "rollouts",
    "runs",
    "security",
    "training",
    "triggers",
]
