"""hub.core."""
