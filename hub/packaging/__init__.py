"""hub.packaging."""
