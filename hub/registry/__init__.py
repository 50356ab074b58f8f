"""hub.registry.models."""
