"""The edgeloop hub: datasets, training, the model registry, packaging, rollouts, ingest,
monitoring and retraining, behind an admin API and a dashboard (the map: docs/ARCHITECTURE.md,
"Inside hub/"). The CLI and the demo live in ``edgeloop_cli``; the hub never imports the
agent or the simulators."""

__all__ = ["__version__"]

__version__ = "0.1.0"
